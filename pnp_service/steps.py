"""Step types: what each kind of step sends, how it judges the answer, what it serves for download.

Owns the step types and their registry by name.  The built-in types are
registered here; a site adds its own through the entry point group
``pnp_service.steps`` (the way nornir registers plugins), each entry point
naming a class or object with the :class:`StepType` interface, and a
declaration schedules it with a ``step`` entry.  Step types are pure: they
build bytes with the protocol core and return an :class:`Outcome`; the state
machine (``provisioner.py``) applies it.  Everything a step type knows about
itself lives here: its PnP service per phase, what its phases mean while the
device is told to wait, what it checks before sending anything, what to do when
a device polls again without answering, and what the listener serves under
its download URL.  So does what the agents' error codes mean (:data:`ADVICE`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import functools
import importlib.metadata
import logging
import os
import re
from typing import Any, Callable, Mapping, Protocol, cast

from . import protocol
from .model import Status, Step

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "pnp_service.steps"


class Verdict(enum.StrEnum):
    """What a response means for the step it answers."""

    ADVANCE = "advance"  # done: go to the next step
    RETRY = "retry"  # failed: try again after a growing backoff, a bounded number of times
    FAIL = "fail"  # the device is not what was declared, or cannot be: error at once
    PHASE = "phase"  # stay on the step in another phase, maybe after a wait
    REFUSE = "refuse"  # the caller is not the declared device (it proved nothing): record it, change nothing else


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A verdict and what goes with it: see the constructors below.

    ``facts``: what the device reported, recorded in its status (udi, platform,
    version, hostname, image_file, mode, flash, flash_free, members).
    """

    verdict: Verdict
    code: str = ""
    message: str = ""
    phase: str = ""
    wait_seconds: int = 0
    deadline_seconds: int = 0
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def advance(facts: Mapping[str, Any] | None = None) -> Outcome:
    """The step is done; go to the next one."""
    return Outcome(Verdict.ADVANCE, facts=facts or {})


def retry(code: str, message: str, phase: str = "", facts: Mapping[str, Any] | None = None) -> Outcome:
    """The step failed; try again (from ``phase``) after a growing backoff, a bounded number of times."""
    return Outcome(Verdict.RETRY, code=code, message=message, phase=phase, facts=facts or {})


def fail(code: str, message: str, facts: Mapping[str, Any] | None = None) -> Outcome:
    """The device is not what was declared, or cannot do it: error at once, no retry."""
    return Outcome(Verdict.FAIL, code=code, message=message, facts=facts or {})


def refuse(code: str, message: str) -> Outcome:
    """The caller is not the device that was declared: the refused claim is recorded, the declaration stays
    serviceable for the genuine device (a stranger cannot put it in error)."""
    return Outcome(Verdict.REFUSE, code=code, message=message)


def enter_phase(phase: str, wait_seconds: int = 0, deadline_seconds: int = 0,
                facts: Mapping[str, Any] | None = None) -> Outcome:
    """Stay on the step in ``phase``; polls get a backoff for ``wait_seconds``; the phase may last ``deadline_seconds``."""
    return Outcome(Verdict.PHASE, phase=phase, wait_seconds=wait_seconds, deadline_seconds=deadline_seconds,
                   facts=facts or {})


@dataclasses.dataclass(frozen=True)
class RequestContext:
    """What a step may need to build its request besides the step and status."""

    envelope: protocol.Envelope
    serial: str
    revision: str
    #: Builds the URL the listener serves a step's download under: ``download_url(kind, name)``.
    download_url: Callable[[str, str], str]
    #: Size in bytes of a file in the listener's image folder (None: not there).
    file_size: Callable[[str], int | None] = lambda name: None
    #: Take one of the listener's image transfer slots for this device before it is sent a download from the
    #: listener (idempotent); False: every slot is in use, the device must wait.
    reserve_transfer: Callable[[], bool] = lambda: True


@dataclasses.dataclass(frozen=True)
class Download:
    """What the listener serves under a step's download URL: text, or a file from the image folder."""

    text: str | None = None
    file_name: str = ""
    content_type: str = "text/plain; charset=utf-8"


class StepType(Protocol):
    name: str

    def service(self, step: Step, status: Status) -> str:
        """The PnP service of the request sent in ``status.phase``; answers of another service are failures."""
        ...

    def is_done(self, step: Step, status: Status) -> bool:
        """True when the step has nothing to do (it is skipped without a request)."""
        ...

    def precheck(self, step: Step, status: Status, ctx: RequestContext) -> Outcome | None:
        """Before a request: None to send it, or an outcome instead (FAIL: an error before anything is sent;
        PHASE: go to another phase first)."""
        ...

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        """The server message for this step in ``status.phase``."""
        ...

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        """Judge the agent's response to that request (``status.last_contact`` is the time of the response)."""
        ...

    def unanswered(self, step: Step, status: Status, reloaded: bool) -> str | None:
        """The device polls again without answering this phase's request: the phase to go on in (None: ask again)."""
        ...

    def wait_reason(self, step: Step, phase: str) -> str:
        """Why the device is told to back off while this step waits in ``phase`` (the backoff's reason)."""
        ...

    def describe(self, step: Step, status: Status) -> str:
        """What the request of ``status.phase`` does, for the log (never a secret, never a URL's signature)."""
        ...

    def download(self, step: Step, kind: str) -> Download | None:
        """What this step serves under a download URL of ``kind``, or None."""
        ...


# --------------------------------------------------------------------------- what agents' errors mean

#: Error codes with what to do about them, in the status and the log.
ADVICE = {
    "1406": "the device's config-register is 0x0 (it boots to ROMMON): set config-register 0x2102 on the device",
    "1410": "the configuration has a line the device rejects (syntax error): check the template with "
            "pnp-service render, and the line the device names",
    "1411": "the device's configuration is locked (another session holds it): retried; clear the lock on the device",
    "1413": "the device found invalid input in the configuration: check the template for this platform",
    "1414": "the device is set to boot manually (boot manual): remove it on the device so it can reload",
    "1415": "the device cannot reload now: retried; check for a pending install or a console session",
    "1805": "the device's config-register is 0x0 (it boots to ROMMON): set config-register 0x2102 on the device",
    "1806": "the image is not in a format the device accepts: give the .bin (never packages.conf) for this platform",
    "1812": "the image carries no signature: use Cisco's signed image",
    "1813": "the image's signature is not valid: the file is corrupt or not Cisco's; copy it again",
    "1814": "the device does not support the image's signature algorithm: use an image for this platform",
    "1815": "the device could not check the image's signature: retried",
    "1816": "the image's signature does not verify: the file is corrupt or not Cisco's; copy it again",
    "1825": "no space on the destination file system: free space on the device or declare a smaller image",
    "1826": "the device's installer failed: pnp-service goes on with install add through the command line",
    "1827": "the device's agent has no installer: pnp-service goes on with install add through the command line",
    "1830": "the image could not be copied to the standby: check the stack's members",
    "1831": "the request reached a standby: the active member must run it; check the stack's roles",
}
_CODE = re.compile(r"(\d{4})\s*$")


def error_number(code: str) -> str:
    """``PnP Service Error 1825`` -> ``1825``."""
    match = _CODE.search(code or "")
    return match.group(1) if match else ""


def advice(code: str, message: str) -> str:
    """The agent's message, preceded by what to do when the code is a known one."""
    known = ADVICE.get(error_number(code))
    return f"{known} (the agent says: {message})" if known else message


def agent_failure(response: protocol.WorkResponse, phase: str = "") -> Outcome:
    error = response.error or protocol.ErrorInfo()
    code = error.code or f"{response.service} failed"
    return retry(code, advice(code, error.message or "the agent reported a failure"), phase=phase)


class SimpleStep:
    """Base for a one-request step: success advances, failure retries, nothing to check or download."""

    name = ""
    pnp_service = ""

    def service(self, step: Step, status: Status) -> str:
        return self.pnp_service

    def is_done(self, step: Step, status: Status) -> bool:
        return False

    def precheck(self, step: Step, status: Status, ctx: RequestContext) -> Outcome | None:
        return None

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        raise NotImplementedError

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        return advance() if response.success else agent_failure(response)

    def unanswered(self, step: Step, status: Status, reloaded: bool) -> str | None:
        return None

    def wait_reason(self, step: Step, phase: str) -> str:
        return f"retrying {step.id} after a failure"

    def describe(self, step: Step, status: Status) -> str:
        return step.param("command")

    def download(self, step: Step, kind: str) -> Download | None:
        return None


#: What a step type must have; the others (:class:`StepType`) default to "nothing to do" when left out.
_REQUIRED_METHODS = ("service", "is_done", "request", "on_response")
_OPTIONAL_METHODS: dict[str, Callable[..., Any]] = {
    "precheck": lambda step, status, ctx: None,
    "unanswered": lambda step, status, reloaded: None,
    "wait_reason": lambda step, phase: f"retrying {step.id} after a failure",
    "describe": lambda step, status: "",
    "download": lambda step, kind: None,
}


class _Completed:
    """A step type with the optional methods it left out filled in."""

    def __init__(self, inner: Any):
        self.name = getattr(inner, "name", "")
        for method in _REQUIRED_METHODS:
            setattr(self, method, getattr(inner, method))
        for method, default in _OPTIONAL_METHODS.items():
            setattr(self, method, getattr(inner, method, None) or default)


def _without_query(url: str) -> str:
    """A URL for a log line: its query (where signatures are) left out."""
    return url.split("?", 1)[0]


# --------------------------------------------------------------------------- device facts


def device_facts(response: protocol.WorkResponse) -> dict[str, Any]:
    """What a device-info response says about the device, as status facts (the UDI's PID wins)."""
    info = response.device or protocol.DeviceInfo()
    facts: dict[str, Any] = {key: value for key, value in (("version", info.version), ("hostname", info.hostname)) if value}
    facts["platform"] = response.udi.pid or info.platform
    facts["udi"] = str(response.udi)
    if info.image_file:
        facts["image_file"] = info.image_file
        facts["mode"] = "install" if info.install_mode else "bundle"
    flash = info.boot_file_system
    facts["flash"] = flash
    free = info.file_system(flash)
    if free is not None and free.free is not None:
        facts["flash_free"] = free.free
    if info.members:
        facts["members"] = tuple(
            (m.slot, m.udi.serial, m.udi.pid, "active" if m.udi.serial == response.udi.serial else "member")
            for m in info.members
        )
    return facts


def pid_mismatch(declared: str, reported: str) -> str:
    return (f"declared pid {declared} but the caller reports {reported or 'none'}: nothing is served to it; if it is "
            "your switch, correct the declaration's pid")


class DeviceInfoStep(SimpleStep):
    """Ask for device facts; a PID or a stack size other than the declared one is an error."""

    name = pnp_service = "device-info"

    @classmethod
    def plan(cls, expect_pid: str = "", expect_members: int = 0) -> Step:
        params = {"expect-pid": expect_pid} if expect_pid else {}
        if expect_members:
            params["expect-members"] = str(expect_members)
        return Step(cls.name, cls.name, params)

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        return protocol.device_info(ctx.envelope, "all")

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        if not response.success:
            return agent_failure(response)
        facts = device_facts(response)
        expected = step.param("expect-pid")
        if expected and facts["platform"] != expected:
            return refuse("pid-mismatch", pid_mismatch(expected, facts["platform"]))
        members = step.param("expect-members")
        found = len(facts.get("members", ())) or 1
        if members and int(members) != found:
            listed = ", ".join(f"{slot}:{serial}" for slot, serial, _, _ in facts.get("members", ())) or facts["udi"]
            return fail("stack-members", f"declared a stack of {members} switches but the device lists {found} ({listed})", facts)
        return advance(facts)


class StackCheckStep(SimpleStep):
    """Read ``show switch``: a member in V-Mismatch (another software version) is an error, never half an upgrade."""

    name = "stack-check"
    pnp_service = "cli-exec"

    @classmethod
    def plan(cls) -> Step:
        return Step(cls.name, cls.name, {})

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        return protocol.cli_exec(ctx.envelope, "show switch")

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        if not response.success:
            return agent_failure(response)
        output = response.details.get("output", "")
        mismatched = [line.split()[0].lstrip("*") for line in output.splitlines()
                      if re.search(r"\bV-Mismatch\b|\bversion mismatch\b", line, re.IGNORECASE) and line.split()]
        if mismatched:
            serials = {str(slot): serial for slot, serial, _, _ in status.facts.members}
            named = [f"{slot} ({serials[slot]})" if slot in serials else slot for slot in mismatched]
            return fail(
                "stack-version-mismatch",
                f"stack member(s) {', '.join(named)} run another software version (V-Mismatch): enable "
                "'software auto-upgrade' or run 'request platform software package install autoupgrade' on the "
                "stack, then reset the device",
            )
        return advance()


def _local_image(location: str) -> bool:
    """A bare file name: the listener serves it from its image folder."""
    return "://" not in location


class Phase(enum.StrEnum):
    """The phases of an image install (``status/phase``)."""

    INSTALL = ""  # image-install of the .bin (in install mode the agent drives the installer itself)
    CLEANUP = "cleanup"  # flash is short in install mode: install remove inactive
    RECHECK = "recheck"  # device-info: the free space after the cleanup
    READY = "ready"  # image-install, after the cleanup
    COPY = "copy"  # the agent has no installer (1826/1827): copy over the command line...
    ACTIVATE = "activate"  # ...then install add file ... activate commit prompt-level none
    CHECK = "check"  # device-info after a failed install: it may have installed anyway
    VERIFY = "verify"  # device-info after the install: the target version, or the reload is awaited
    QUEUED = "queued"  # every image transfer slot is in use: wait for one, then install
    COPY_QUEUED = "copy-queued"  # the same, before a copy


@dataclasses.dataclass(frozen=True)
class PhaseSpec:
    """One phase of a step's graph: what it sends and where each kind of answer leads.

    ``success`` None: the device-info answer is judged by the version it reports: the target version ends the step,
    another goes to ``otherwise``.  ``failure``: the phase a failed answer retries from (after the retry backoff,
    counted).  ``no_answer``: where a device that polls again without answering goes on (None: it is asked again,
    counted).  ``queue``: the phase that waits for a transfer slot before a download from the listener;
    ``dequeue``: in such a phase, where a free slot leads.  ``installer_missing``: where the agent's codes
    1826/1827 lead on an install-mode switch.  ``flash_short``: where an install-mode switch with too little free
    space goes before anything is sent (None: an error, nothing copied).  ``expired``: the phase a wait that
    ran out (or a reload onto the old version) retries from.  ``wait``: why the device backs off while in this phase.
    """

    service: str
    success: Phase | None = None
    otherwise: Phase | None = None
    failure: Phase | None = None
    no_answer: Phase | None = None
    queue: Phase | None = None
    dequeue: Phase | None = None
    installer_missing: Phase | None = None
    flash_short: Phase | None = None
    expired: Phase | None = None
    wait: str = ""
    does: str = ""


class ImageInstallStep:
    """Install the target image unless it runs already; the device proves the reload with its version.

    The phase graph is :attr:`PHASES` (drawn in docs/protocol.md): the .bin goes by image-install (the agent drives
    the installer itself in install mode: Cisco's codes 1826/1827 are its installer's); flash short in install
    mode: ``install remove inactive`` and a look at the space again first; no installer: the command line copies
    and activates.  After the install every poll is answered with device-info at once: the target version ends
    the step, the old one waits for the reload until ``reload-wait`` has passed.  The image is never installed
    twice without a device-info in between.
    """

    name = "image-install"
    _READY = PhaseSpec("image-install", success=Phase.VERIFY, failure=Phase.CHECK, no_answer=Phase.VERIFY,
                       queue=Phase.QUEUED, installer_missing=Phase.COPY, does="install {target} from {source}")
    PHASES: Mapping[Phase, PhaseSpec] = {
        Phase.INSTALL: dataclasses.replace(_READY, flash_short=Phase.CLEANUP),
        Phase.CLEANUP: PhaseSpec("cli-exec", success=Phase.RECHECK, failure=Phase.CLEANUP,
                                 does="install remove inactive (flash is short)"),
        Phase.RECHECK: PhaseSpec("device-info", success=Phase.READY, failure=Phase.RECHECK,
                                 does="free space after install remove inactive"),
        Phase.READY: _READY,
        Phase.COPY: PhaseSpec("cli-exec", success=Phase.ACTIVATE, failure=Phase.COPY, queue=Phase.COPY_QUEUED,
                              does="copy {target} over the command line"),
        Phase.ACTIVATE: PhaseSpec("cli-exec", success=Phase.VERIFY, failure=Phase.CHECK, no_answer=Phase.VERIFY,
                                  does="install add {target} activate commit"),
        Phase.CHECK: PhaseSpec("device-info", otherwise=Phase.INSTALL, failure=Phase.CHECK,
                               does="did the failed install install it?"),
        # The old version: wait for the reload (retried from the install once reload-wait has passed, or at once
        # when the device says it has reloaded).
        Phase.VERIFY: PhaseSpec("device-info", otherwise=Phase.VERIFY, failure=Phase.VERIFY, expired=Phase.INSTALL,
                                wait="waiting for the reload", does="is {version} running?"),
        Phase.QUEUED: PhaseSpec("image-install", dequeue=Phase.INSTALL, wait="waiting for a free image transfer slot",
                                does="waiting for a free image transfer slot"),
        Phase.COPY_QUEUED: PhaseSpec("cli-exec", dequeue=Phase.COPY, wait="waiting for a free image transfer slot",
                                     does="waiting for a free image transfer slot"),
    }
    #: How long a device waits for a transfer slot before it asks again.
    QUEUE_SECONDS = 60

    @classmethod
    def plan(cls, version: str, location: str, checksum: str, reload_wait: int, size: int = 0) -> Step:
        """``location``: a URL, or a file name in the listener's image folder; ``size``: bytes (0: unknown)."""
        params = {"version": version, "location": location, "checksum": checksum, "reload-wait": str(reload_wait)}
        if size:
            params["size"] = str(size)
        return Step(cls.name, cls.name, params)

    @classmethod
    def _spec(cls, status: Status) -> tuple[Phase, PhaseSpec]:
        phase = Phase(status.phase) if status.phase in cls._PHASE_NAMES else Phase.INSTALL
        return phase, cls.PHASES[phase]

    _PHASE_NAMES = frozenset(phase.value for phase in Phase)

    def service(self, step: Step, status: Status) -> str:
        return self._spec(status)[1].service

    def is_done(self, step: Step, status: Status) -> bool:
        return status.phase == Phase.INSTALL and bool(status.facts.version) and status.facts.version == step.param("version")

    @staticmethod
    def _file(step: Step) -> str:
        return os.path.basename(step.param("location").rstrip("/")) or "image.bin"

    def precheck(self, step: Step, status: Status, ctx: RequestContext) -> Outcome | None:
        local = _local_image(step.param("location"))
        phase, spec = self._spec(status)
        if spec.dequeue is not None:
            return enter_phase(spec.dequeue) if ctx.reserve_transfer() else self._queued(phase)
        if spec.queue is None:
            return None
        if spec.service == "image-install":
            size = int(step.param("size") or 0) or (ctx.file_size(self._file(step)) if local else None) or 0
            if size and status.facts.flash_free is not None and size > status.facts.flash_free:
                if status.facts.mode == "install" and spec.flash_short is not None:
                    return enter_phase(spec.flash_short)  # install remove inactive, then look again
                where = status.facts.flash or "flash:"
                after = " even after 'install remove inactive'" if status.facts.mode == "install" else ""
                return fail("no-space", f"the image needs {size} bytes but {where} has {status.facts.flash_free} free{after}: "
                            "free space on the device (delete old images), then reset it; nothing was copied")
        if local and not ctx.reserve_transfer():
            return self._queued(spec.queue)
        return None

    def _queued(self, phase: Phase) -> Outcome:
        """Every image transfer slot of the listener is in use: back off, keep the place, nothing counted."""
        return enter_phase(phase, wait_seconds=self.QUEUE_SECONDS)

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        (phase, spec), env = self._spec(status), ctx.envelope
        if spec.service == "device-info":
            return protocol.device_info(env, "all")
        if phase == Phase.CLEANUP:
            return protocol.cli_exec(env, "install remove inactive", "PT10M", dialogue=[("[y/n]", "y")])
        location = step.param("location")
        if _local_image(location):
            location = ctx.download_url("image", self._file(step))
        flash = status.facts.flash or "flash:"
        if phase == Phase.COPY:
            return protocol.cli_exec(env, f"copy {location} {flash}{self._file(step)}", "PT60M",
                                     dialogue=[("Destination filename", ""), ("[confirm]", "y")])
        if phase == Phase.ACTIVATE:
            return protocol.cli_exec(env, f"install add file {flash}{self._file(step)} activate commit prompt-level none",
                                     "PT60M")
        return protocol.image_install(env, location, step.param("checksum"), destination=flash,
                                      reload=protocol.Reload(reason="pnp-service image install"))

    def _reload_wait(self, step: Step) -> int:
        return int(step.param("reload-wait", "60") or 60)

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        phase, spec = self._spec(status)
        if not response.success:
            number = error_number(response.error.code if response.error else "")
            if spec.installer_missing is not None and number in ("1826", "1827") and status.facts.mode == "install":
                return enter_phase(spec.installer_missing)  # the agent's installer is missing or failed
            return agent_failure(response, spec.failure or phase)
        if spec.service != "device-info":
            deadline = self._reload_wait(step) if spec.success == Phase.VERIFY else 0
            return enter_phase(spec.success or phase, deadline_seconds=deadline)
        facts = device_facts(response)
        if spec.success is not None:
            return enter_phase(spec.success, facts=facts)
        if facts.get("version") == step.param("version"):
            return advance(facts)
        if phase == Phase.VERIFY:
            return self._verify_old_version(step, status, facts.get("version") or "an unknown version", facts)
        return enter_phase(spec.otherwise or Phase.INSTALL, facts=facts)  # not installed after all: install

    def _verify_old_version(self, step: Step, status: Status, running: str, facts: Mapping[str, Any]) -> Outcome:
        """The old version in verify: after the device's word that it reloaded, a failed attempt at once; before the
        reload wait is over, a backoff for the rest of it (its reload brings it back sooner); after, a failed attempt."""
        wanted, now = step.param("version"), status.last_contact
        if status.reloaded is not None:  # said in this phase (the provisioner forgets it when the phase changes)
            return retry("image-not-running", f"the device reloaded after the install but runs {running}, not {wanted}",
                         phase=self.PHASES[Phase.VERIFY].expired or Phase.INSTALL, facts=facts)
        # Entered after an answer that was lost (a poll instead of the install's answer): the wait counts from then.
        deadline = status.deadline or (status.phase_since + dt.timedelta(seconds=self._reload_wait(step))
                                       if status.phase_since else None)
        if deadline is None or now is None or now >= deadline:
            return retry("no-reload", f"the device did not reload within reload-wait ({self._reload_wait(step)} s) "
                         f"and still runs {running}, not {wanted}", phase=self.PHASES[Phase.VERIFY].expired or Phase.INSTALL, facts=facts)
        remaining = int((deadline - now).total_seconds())
        return enter_phase("verify", wait_seconds=max(1, remaining), facts=facts)

    def unanswered(self, step: Step, status: Status, reloaded: bool) -> str | None:
        # An install may reload the device before it answers: never send it again blind, look first.
        return self._spec(status)[1].no_answer

    def wait_reason(self, step: Step, phase: str) -> str:
        spec = self.PHASES.get(Phase(phase)) if phase in self._PHASE_NAMES else None
        return (spec.wait if spec is not None else "") or f"retrying {step.id} after a failure"

    def describe(self, step: Step, status: Status) -> str:
        phase, spec = self._spec(status)
        location = step.param("location")
        source = "the listener's image folder" if _local_image(location) else _without_query(location)
        said = spec.does.format(target=f"{self._file(step)} ({step.param('version')})", source=source,
                                version=step.param("version"))
        if spec.service == "image-install" and spec.dequeue is None:
            said += f" to {status.facts.flash or 'flash:'}" + (f", running {status.facts.version}" if status.facts.version else "")
        return said

    def download(self, step: Step, kind: str) -> Download | None:
        location = step.param("location")
        if kind == "image" and _local_image(location):
            return Download(file_name=os.path.basename(location), content_type="application/octet-stream")
        return None


class TrustpoolStep(SimpleStep):
    """HTTPS from day 0: the listener's CA into the device's trustpool, then the agent reconnects over HTTPS.

    The listener puts this step ahead of every device's work when it is given a trustpool
    (``serve --trustpool``); a device that already calls over HTTPS has nothing to do.
    """

    name = "trustpool"
    pnp_service = "certificate-install"

    @classmethod
    def plan(cls, bundle: str, host: str = "", port: int = 443, ntp: str = "") -> Step:
        """``bundle``: the CA certificates (PEM); ``host``/``port``: where the agent reconnects over HTTPS."""
        params = {"bundle": bundle, "host": host, "port": str(port)}
        if ntp:
            params["ntp"] = ntp
        return Step(cls.name, cls.name, params)

    def is_done(self, step: Step, status: Status) -> bool:
        return status.secure

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        host, port = step.param("host"), step.param("port")
        return protocol.certificate_install(ctx.envelope, ctx.download_url("trustpool", "ca.pem"),
                                            ntp=step.param("ntp") or None,
                                            reconnect=(host, int(port or 443)) if host else None)

    def download(self, step: Step, kind: str) -> Download | None:
        if kind == "trustpool":
            return Download(text=step.param("bundle"), content_type="application/x-pem-file")
        return None


def host_key_from_output(output: str) -> str:
    """The SSH host key in OpenSSH form, from IOS-XE's ``show crypto key mypubkey``: its ``Key Data`` (DER hex), or
    a line already in OpenSSH form.  Empty when there is none."""
    from cryptography.hazmat.primitives import serialization

    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(("ssh-", "ecdsa-sha2-")):
            candidate = " ".join(parts[:2])
            try:  # it goes into the controller's known_hosts: a key, or nothing
                serialization.load_ssh_public_key(candidate.encode())
            except (ValueError, TypeError):
                continue
            return candidate
    if "Key Data:" not in output:
        return ""
    hexdigits = re.sub(r"[^0-9A-Fa-f]", "", output.split("Key Data:", 1)[1])
    try:
        key = serialization.load_der_public_key(bytes.fromhex(hexdigits))
        return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    except (ValueError, TypeError):
        return ""


class SshHostKeyStep(SimpleStep):
    """Read the device's SSH host key over PnP, so the controller can pin it: no trust on first use."""

    name = "ssh-host-key"
    pnp_service = "cli-exec"

    @classmethod
    def plan(cls, command: str) -> Step:
        """``command``: what shows the key (``show crypto key mypubkey rsa LABEL`` on IOS-XE)."""
        return Step(cls.name, cls.name, {"command": command})

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        return protocol.cli_exec(ctx.envelope, step.param("command"))

    def on_response(self, step: Step, status: Status, response: protocol.WorkResponse) -> Outcome:
        if not response.success:
            return agent_failure(response)
        key = host_key_from_output(response.details.get("output", ""))
        if not key:
            return retry("no-host-key", f"'{step.param('command')}' showed no SSH host key: check that the template "
                         "enables SSH (ip ssh rsa keypair-name) and that the key was generated")
        return advance({"host_key": key})


class CliExecStep(SimpleStep):
    name = pnp_service = "cli-exec"

    @classmethod
    def plan(cls, step_id: str, command: str) -> Step:
        return Step(step_id, cls.name, {"command": command})

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        return protocol.cli_exec(ctx.envelope, step.param("command"))


class CliConfigStep(SimpleStep):
    """Apply configuration lines (param ``lines``, ``on-fail``), or save running to startup (``persist`` true)."""

    name = pnp_service = "cli-config"

    @classmethod
    def plan_save(cls, step_id: str = "save-config") -> Step:
        """Save the running configuration to startup."""
        return Step(step_id, cls.name, {"persist": "true"})

    def request(self, step: Step, status: Status, ctx: RequestContext) -> bytes:
        if step.param("persist") == "true":
            return protocol.cli_config_persist(ctx.envelope)
        return protocol.cli_config_apply(ctx.envelope, step.param("lines").splitlines(), step.param("on-fail", "stop"))


class ConfigUpgradeStep(SimpleStep):
    """Have the device copy its configuration from the listener (or the declared URL)."""

    name = pnp_service = "config-upgrade"

    @classmethod
    def plan(cls, apply_to: str, reload: bool, config: str | None = None, url: str = "") -> Step:
        """The rendered ``config`` (served by the listener under a signed URL), or the ``url`` the device copies."""
        params = {"apply-to": apply_to, "reload": "true" if reload else "false"}
        if config is not None:
            params["config"] = config
        else:
            params["url"] = url
        return Step(cls.name, cls.name, params)

    def describe(self, step: Step, status: Status) -> str:
        where = _without_query(step.param("url")) if step.param("url") else "the listener"
        return f"configuration from {where} to {step.param('apply-to', 'startup')}, " \
               + ("then reload" if step.param("reload") == "true" else "no reload")

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
    for step_type in (TrustpoolStep(), DeviceInfoStep(), StackCheckStep(), ImageInstallStep(), CliExecStep(),
                      CliConfigStep(), ConfigUpgradeStep(), SshHostKeyStep())
}


class UnknownStepType(LookupError):
    pass


class StepRegistryError(RuntimeError):
    """Two step types claim one name, or a plugin cannot be loaded; the message names the sources."""


def _source_of(step_type: object) -> str:
    kind = step_type if isinstance(step_type, type) else type(step_type)
    return f"{kind.__module__}:{kind.__qualname__}"


class StepRegistry:
    """Step types by name: the built-ins (:data:`BUILTIN_STEP_TYPES`, registered here and nowhere else), then
    those of the ``pnp_service.steps`` entry points (a site's plugins)."""

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
            self.register(entry_point.name, step_type, source=source)

    def register(self, name: str, step_type: StepType, source: str = "") -> None:
        """Add a step type; a name already taken is an error that names both sources."""
        source = source or f"register({name!r}) of {_source_of(step_type)}"
        # Completed once here, so the provisioner calls every method without a fallback on each poll.
        missing = [method for method in _REQUIRED_METHODS if not callable(getattr(step_type, method, None))]
        if missing:
            raise StepRegistryError(f"step type {name!r} from {source} has no {', '.join(missing)}: subclass "
                                    "pnp_service.steps.SimpleStep")
        if not all(callable(getattr(step_type, method, None)) for method in _OPTIONAL_METHODS):
            step_type = cast(StepType, _Completed(step_type))  # every method is set in its __init__
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


@functools.lru_cache(maxsize=1)
def default_registry() -> StepRegistry:
    """The process's registry: the built-ins and the installed plugins, loaded once (a plugin that fails to load
    raises StepRegistryError here, each time it is asked for, until it is fixed)."""
    return StepRegistry()
