"""Step types: what each kind of step sends, how it judges the answer, what it serves for download.

Owns the step types and their registry by name.  The built-in types are
registered here; a site adds its own through the entry point group
``pnp_service.steps`` (the way nornir registers plugins), each entry point
naming a class or object with the :class:`StepType` interface, and a
declaration schedules it with a ``step`` entry.  Step types are pure: they
build bytes with the protocol core and return an :class:`Outcome`; the state
machine (``provisioner.py``) applies it.  Everything a step type knows about
itself lives here: its PnP service per phase, what its phases mean while the
device is told to wait, and what the listener serves under its download URL.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import logging
import os
from typing import Callable, Mapping, Protocol

from . import protocol
from .model import Status, Step

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pnp_service.steps"


class Verdict(enum.StrEnum):
    """What a response means for the step it answers."""

    ADVANCE = "advance"  # done: go to the next step
    RETRY = "retry"  # failed: try again after a growing backoff, a bounded number of times
    FAIL = "fail"  # the device is not what was declared: error at once
    PHASE = "phase"  # stay on the step in another phase, maybe after a wait


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A verdict and what goes with it: see the constructors below."""

    verdict: Verdict
    code: str = ""
    message: str = ""
    phase: str = ""
    wait_seconds: int = 0
    facts: Mapping[str, str] = dataclasses.field(default_factory=dict)


def advance(facts: Mapping[str, str] | None = None) -> Outcome:
    """The step is done; go to the next one."""
    return Outcome(Verdict.ADVANCE, facts=facts or {})


def retry(code: str, message: str, phase: str = "", facts: Mapping[str, str] | None = None) -> Outcome:
    """The step failed; try again (from ``phase``) after a growing backoff, a bounded number of times."""
    return Outcome(Verdict.RETRY, code=code, message=message, phase=phase, facts=facts or {})


def fail(code: str, message: str, facts: Mapping[str, str] | None = None) -> Outcome:
    """The device is not what was declared: error at once, no retry."""
    return Outcome(Verdict.FAIL, code=code, message=message, facts=facts or {})


def enter_phase(phase: str, wait_seconds: int = 0) -> Outcome:
    """Stay on the step, continue with another phase, answering polls with a backoff meanwhile."""
    return Outcome(Verdict.PHASE, phase=phase, wait_seconds=wait_seconds)


@dataclasses.dataclass(frozen=True)
class RequestContext:
    """What a step may need to build its request besides the step and status."""

    envelope: protocol.Envelope
    serial: str
    revision: str
    #: Builds the URL the listener serves a step's download under: ``download_url(kind, name)``.
    download_url: Callable[[str, str], str]


@dataclasses.dataclass(frozen=True)
class Download:
    """What the listener serves under a step's download URL: text, or a file from the image folder."""

    text: str | None = None
    file_name: str = ""
    content_type: str = "text/plain; charset=utf-8"


class StepType(Protocol):
    name: str

    def service(self, step: Step, phase: str) -> str:
        """The PnP service of the request sent in ``phase``; responses must match it."""
        ...

    def is_done(self, step: Step, status: Status) -> bool:
        """True when the step has nothing to do (it is skipped without a request)."""
        ...

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        """The server message for this step in ``status.phase``."""
        ...

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        """Judge the agent's response to that request."""
        ...

    def wait_reason(self, step: Step, phase: str) -> str:
        """Why the device is told to back off while this step waits in ``phase`` (the backoff's reason)."""
        ...

    def download(self, step: Step, kind: str) -> Download | None:
        """What this step serves under a download URL of ``kind``, or None."""
        ...


def agent_failure(response: protocol.WorkResponse) -> Outcome:
    error = response.error or protocol.ErrorInfo()
    return retry(error.code or f"{response.service} failed", error.message or "the agent reported a failure")


class SimpleStep:
    """Base for a one-request step: success advances, failure retries, nothing to download."""

    name = ""
    pnp_service = ""

    def service(self, step: Step, phase: str) -> str:
        return self.pnp_service

    def is_done(self, step: Step, status: Status) -> bool:
        return False

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        raise NotImplementedError

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        return advance() if response.success else agent_failure(response)

    def wait_reason(self, step: Step, phase: str) -> str:
        return f"retrying {step.id} after a failure"

    def download(self, step: Step, kind: str) -> Download | None:
        return None


def device_facts(response: protocol.WorkResponse) -> dict[str, str]:
    """Platform, version and hostname from a device-info response (the UDI's PID wins)."""
    facts = {key: response.details[key] for key in ("version", "hostname") if response.details.get(key)}
    facts["platform"] = response.udi.pid or response.details.get("platform", "")
    facts["udi"] = str(response.udi)
    return facts


class DeviceInfoStep(SimpleStep):
    """Ask for device facts; a PID other than the declared one is an error."""

    name = pnp_service = "device-info"

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        return protocol.device_info(ctx.envelope, "all")

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        if not response.success:
            return agent_failure(response)
        facts = device_facts(response)
        expected = step.param("expect-pid")
        if expected and facts["platform"] != expected:
            return fail(
                "pid-mismatch",
                f"declared pid {expected} but the device reports {facts['platform'] or 'none'}; "
                "nothing is served until the declaration is corrected",
                facts,
            )
        return advance(facts)


def _local_image(location: str) -> bool:
    """A bare file name: the listener serves it from its image folder."""
    return "://" not in location


class ImageInstallStep:
    """Install the target image unless it already runs, wait out the reload, verify the version."""

    name = "image-install"

    def service(self, step: Step, phase: str) -> str:
        return "device-info" if phase == "verify" else "image-install"

    def is_done(self, step: Step, status: Status) -> bool:
        return status.phase != "verify" and bool(status.version) and status.version == step.param("version")

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        if status.phase == "verify":
            return protocol.device_info(ctx.envelope, "all")
        location = step.param("location")
        if _local_image(location):
            location = ctx.download_url("image", os.path.basename(location))
        return protocol.image_install(
            ctx.envelope,
            location,
            step.param("checksum"),
            reload=protocol.Reload(reason="pnp-service image install"),
        )

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        if not response.success:
            return agent_failure(response)
        if status.phase != "verify":
            return enter_phase("verify", int(step.param("reload-wait", "60") or 60))
        facts = device_facts(response)
        wanted = step.param("version")
        if facts.get("version") == wanted:
            return advance(facts)
        return retry(
            "image-version-mismatch",
            f"after the install the device runs {facts.get('version') or 'an unknown version'}, not {wanted}",
            phase="",
            facts=facts,
        )

    def wait_reason(self, step: Step, phase: str) -> str:
        return "waiting for the reload" if phase == "verify" else f"retrying {step.id} after a failure"

    def download(self, step: Step, kind: str) -> Download | None:
        location = step.param("location")
        if kind == "image" and _local_image(location):
            return Download(file_name=os.path.basename(location), content_type="application/octet-stream")
        return None


class CliExecStep(SimpleStep):
    name = pnp_service = "cli-exec"

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        return protocol.cli_exec(ctx.envelope, step.param("command"))


class CliConfigStep(SimpleStep):
    """Apply configuration lines (param ``lines``, ``on-fail``), or save running to startup (``persist`` true)."""

    name = pnp_service = "cli-config"

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        if step.param("persist") == "true":
            return protocol.cli_config_persist(ctx.envelope)
        return protocol.cli_config_apply(ctx.envelope, step.param("lines").splitlines(), step.param("on-fail", "stop"))


class ConfigUpgradeStep(SimpleStep):
    """Have the device copy its configuration from the listener (or the declared URL)."""

    name = pnp_service = "config-upgrade"

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        location = step.param("url") or ctx.download_url("config", "")
        reload = protocol.Reload(reason="pnp-service day-0 configuration") if step.param("reload") == "true" else None
        return protocol.config_upgrade(ctx.envelope, location, apply_to=step.param("apply-to", "startup"), reload=reload)

    def download(self, step: Step, kind: str) -> Download | None:
        if kind == "config" and "config" in step.params:
            return Download(text=step.params["config"])
        return None


BUILTIN_STEP_TYPES: dict[str, StepType] = {
    step_type.name: step_type
    for step_type in (DeviceInfoStep(), ImageInstallStep(), CliExecStep(), CliConfigStep(), ConfigUpgradeStep())
}


class UnknownStepType(LookupError):
    pass


class StepRegistryError(RuntimeError):
    """Two step types claim one name, or a plugin cannot be loaded; the message names the sources."""


def _source_of(step_type: object) -> str:
    kind = step_type if isinstance(step_type, type) else type(step_type)
    return f"{kind.__module__}:{kind.__qualname__}"


class StepRegistry:
    """Step types by name: the built-ins, then those of the ``pnp_service.steps`` entry points."""

    def __init__(self, step_types: Mapping[str, StepType] | None = None, load_entry_points: bool = True):
        self._types: dict[str, StepType] = {}
        self._sources: dict[str, str] = {}
        for name, step_type in (BUILTIN_STEP_TYPES if step_types is None else step_types).items():
            self.register(name, step_type, source=f"built-in {_source_of(step_type)}")
        if load_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            source = f"entry point {entry_point.name} = {entry_point.value}"
            try:
                loaded = entry_point.load()
            except Exception as exc:
                raise StepRegistryError(f"step type plugin {source} failed to load: {exc}") from exc
            step_type = loaded() if isinstance(loaded, type) else loaded
            known = self._types.get(entry_point.name)
            if known is not None and type(known) is type(step_type):
                continue  # this package's own entry points name its built-ins
            self.register(entry_point.name, step_type, source=source)

    def register(self, name: str, step_type: StepType, source: str = "") -> None:
        """Add a step type; a name already taken is an error that names both sources."""
        source = source or f"register({name!r}) of {_source_of(step_type)}"
        if name in self._types:
            raise StepRegistryError(f"step type {name!r} is registered twice: by {self._sources[name]} and by {source}")
        self._types[name] = step_type
        self._sources[name] = source

    def get(self, name: str) -> StepType:
        try:
            return self._types[name]
        except KeyError:
            known = ", ".join(self.names())
            raise UnknownStepType(f"unknown step type {name!r} (known: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._types)
