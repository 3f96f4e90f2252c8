"""Planner: a declaration becomes an ordered list of steps with a revision digest.

Owns template rendering (Jinja2, sandboxed, StrictUndefined) and the order of
the steps: device-info, image-install, the declaration's cli-exec commands,
config-upgrade, with the operator's extra steps (``pnp-device/step``) at the
positions they name.  Pure: the only inputs besides the declaration are a
template loader for ``config/template-file`` and the names of the registered
step types.  The same code runs in the controller's service module and in the
embedded store, and the revision is a digest of the declaration and of the
template text it uses, so every process computes the same revision.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
from typing import Callable, Collection, Iterable, Mapping, Sequence

import jinja2
import jinja2.sandbox

from .model import Declaration, ExtraStep, Step, Work
from .steps import (CliConfigStep, CliExecStep, ConfigUpgradeStep, DeviceInfoStep, ImageInstallStep, SshHostKeyStep,
                    StackCheckStep)

#: Bump when the plan format changes, so every device re-plans.
PLAN_FORMAT = "2"

DEFAULT_TEMPLATE_DIRS = ("/usr/local/share/pnp-service/templates",)
#: The environment variable that tells the controller's service module (clixon_server.py) where template files
#: are, instead of DEFAULT_TEMPLATE_DIRS (folders separated by ``:``).
TEMPLATE_DIRS_VARIABLE = "PNP_TEMPLATE_DIRS"
_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

#: Where an extra step may go, relative to the built-in steps (the YANG's enumeration).
POSITIONS = ("after-device-info", "after-image", "before-config", "after-config")
#: ``trustpool`` is the listener's HTTPS bootstrap (serve --trustpool), put first when it serves one.
BUILTIN_STEP_IDS = ("trustpool", "device-info", "stack-check", "image-install", "ssh-keygen", "config-upgrade",
                    "ssh-host-key", "save-config")

TemplateLoader = Callable[[str], str]


class PlanningError(ValueError):
    """A declaration that cannot be planned; the message names the device and what to fix."""


def controller_template_dirs(environ: Mapping[str, str]) -> list[str]:
    """Where the controller's service module reads template files: $PNP_TEMPLATE_DIRS, else the default folder."""
    configured = environ.get(TEMPLATE_DIRS_VARIABLE, "")
    return [d for d in configured.split(os.pathsep) if d] or list(DEFAULT_TEMPLATE_DIRS)


def file_template_loader(directories: Sequence[str] = DEFAULT_TEMPLATE_DIRS) -> TemplateLoader:
    """Load ``config/template-file`` names from the first directory that has them."""

    def load(name: str) -> str:
        return read_template_file(find_template_file(name, directories))

    return load


def find_template_file(name: str, directories: Sequence[str]) -> str:
    """The path of template file ``name`` in the first directory that has it."""
    if not _TEMPLATE_FILE.fullmatch(name):
        raise LookupError(f"template file name {name!r} is not a plain file name")
    for directory in directories:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    raise LookupError(f"template file {name!r} not found in {', '.join(directories) or 'no directory'}")


def read_template_file(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _no_template_files(name: str) -> str:
    raise LookupError(f"template file {name!r} given but no template directory is configured")


_ENVIRONMENT = jinja2.sandbox.SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> jinja2.Template:
    # Many devices share one template: compile it once.
    return _ENVIRONMENT.from_string(source)


def typed_value(name: str, value: str, kind: str) -> object:
    """A variable's value as its declared type: a number, a boolean, a list (JSON array or comma-separated)."""
    if kind == "number":
        try:
            return int(value)
        except ValueError:
            try:
                return float(value)
            except ValueError:
                raise PlanningError(f"variable {name} is declared a number but its value is {value!r}") from None
    if kind == "boolean":
        if value.strip().lower() not in ("true", "false"):
            raise PlanningError(f"variable {name} is declared a boolean but its value is {value!r} (true or false)")
        return value.strip().lower() == "true"
    if kind == "list":
        if value.lstrip().startswith("["):
            try:
                items = json.loads(value)
            except ValueError as exc:
                raise PlanningError(f"variable {name} is declared a list but is not a JSON array: {exc}") from None
            if not isinstance(items, list):
                raise PlanningError(f"variable {name} is declared a list but is not a JSON array")
            return items
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


#: The exec command that makes the SSH host key, and the one that shows it (IOS-XE); the key's label.
SSH_KEY_LABEL = "pnp-ssh"
SSH_KEYGEN_COMMAND = f"crypto key generate rsa general-keys modulus 2048 label {SSH_KEY_LABEL}"
SSH_HOST_KEY_COMMAND = f"show crypto key mypubkey rsa {SSH_KEY_LABEL}"


def controller_variables(public_key: str) -> dict[str, object]:
    """Template variables for a device the controller will manage, from its SSH public key (an ``id_*.pub`` line).

    ``controller_ssh_key`` (the whole line), ``controller_ssh_key_type``, ``controller_ssh_key_data`` (the base64
    part) and ``controller_ssh_key_lines`` (that part in 72-character lines, as IOS-XE's ``key-string`` takes it).
    """
    parts = public_key.split()
    if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
        raise PlanningError(f"the controller's public key is not an OpenSSH public key line: {public_key[:40]!r}")
    data = parts[1]
    return {
        "controller_ssh_key": " ".join(parts[:2]),
        "controller_ssh_key_type": parts[0],
        "controller_ssh_key_data": data,
        "controller_ssh_key_lines": [data[i : i + 72] for i in range(0, len(data), 72)],
    }


def template_variables(declaration: Declaration, context: Mapping[str, object] | None = None) -> dict[str, object]:
    """Declared variables (as their declared types), then the built-ins ``serial``, ``hostname`` and ``pid``, which win.

    A built-in the declaration leaves out is not defined at all, so a template that
    uses it fails (StrictUndefined) instead of rendering ``hostname `` with nothing.
    ``context``: variables every declaration gets (the controller's SSH key); a
    declaration with a ``controller`` container also gets ``netconf_user``.
    """
    types = dict(declaration.variable_types)
    try:
        variables: dict[str, object] = {
            name: typed_value(name, value, types.get(name, "string")) for name, value in declaration.variables
        }
    except PlanningError as exc:
        raise PlanningError(f"pnp-device {declaration.serial}: {exc}") from None
    for name, value in (context or {}).items():
        variables.setdefault(name, value)
    if declaration.handoff is not None:
        variables["netconf_user"] = declaration.handoff.user
    variables["serial"] = declaration.serial
    for name in ("hostname", "pid"):
        value = getattr(declaration, name)
        if value:
            variables[name] = value
        else:
            variables.pop(name, None)
    return variables


def template_source(declaration: Declaration, load_template: TemplateLoader = _no_template_files) -> str | None:
    """The template text of a declaration, or None when its config is a URL or absent."""
    if declaration.template is not None:
        return declaration.template
    if declaration.template_lines:
        return "\n".join(text for _, text in sorted(declaration.template_lines)) + "\n"
    if declaration.template_file:
        try:
            return load_template(declaration.template_file)
        except (LookupError, OSError, UnicodeDecodeError) as exc:
            raise PlanningError(f"pnp-device {declaration.serial}: {exc}") from None
    return None


def _render(declaration: Declaration, source: str, what: str, context: Mapping[str, object] | None = None) -> str:
    where = f"pnp-device {declaration.serial}"
    try:
        return _compiled(source).render(template_variables(declaration, context))
    except jinja2.UndefinedError as exc:
        raise PlanningError(f"{where}: {what} variable {exc.message} (declare it under variable)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise PlanningError(f"{where}: {what} syntax error on line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise PlanningError(f"{where}: {what} error: {exc}") from None


def render_config(declaration: Declaration, load_template: TemplateLoader = _no_template_files,
                  context: Mapping[str, object] | None = None) -> str | None:
    """Render the declaration's template; None when there is none."""
    source = template_source(declaration, load_template)
    return None if source is None else _render(declaration, source, "template", context)


def _extra(declaration: Declaration, position: str, context: Mapping[str, object] | None) -> Iterable[Step]:
    for extra in declaration.steps:
        if extra.position == position:
            params = {name: _render(declaration, value, f"step {extra.id} param {name}", context)
                      for name, value in extra.params}
            yield Step(extra.id, extra.type, params)


def _steps(declaration: Declaration, config: str | None, context: Mapping[str, object] | None = None) -> Iterable[Step]:
    """The built-in steps in their order, each built by its step type, with the declaration's extra steps
    where they ask to be."""
    yield DeviceInfoStep.plan(expect_pid=declaration.pid, expect_members=declaration.stack_size)
    if declaration.stack:
        yield StackCheckStep.plan()
    yield from _extra(declaration, "after-device-info", context)
    if declaration.has_image:
        yield ImageInstallStep.plan(declaration.image_version, declaration.image_url, declaration.image_md5,
                                    declaration.image_reload_wait, declaration.image_size)
    yield from _extra(declaration, "after-image", context)
    for seq, command in sorted(declaration.commands):
        yield CliExecStep.plan(f"cli-exec-{seq}", command)
    yield from _extra(declaration, "before-config", context)
    if declaration.handoff is not None and declaration.handoff.check_host_key:
        # The controller will check the host key it is given, not trust the first one it sees: make it here.
        yield CliExecStep.plan("ssh-keygen", SSH_KEYGEN_COMMAND)
    if config is not None or declaration.config_url:
        yield ConfigUpgradeStep.plan(declaration.apply_to, declaration.reload, config, declaration.config_url)
    if declaration.handoff is not None:
        if declaration.handoff.check_host_key:
            yield SshHostKeyStep.plan(SSH_HOST_KEY_COMMAND)
        yield CliConfigStep.plan_save()
    yield from _extra(declaration, "after-config", context)


def _check_extra_steps(declaration: Declaration, known_step_types: Collection[str] | None) -> None:
    where = f"pnp-device {declaration.serial}"
    builtin_ids = set(BUILTIN_STEP_IDS) | {f"cli-exec-{seq}" for seq, _ in declaration.commands}
    for extra in declaration.steps:
        if extra.id in builtin_ids:
            raise PlanningError(f"{where}: step id {extra.id!r} is taken by a built-in step; choose another id")
        if extra.position not in POSITIONS:
            raise PlanningError(f"{where}: step {extra.id} position {extra.position!r} is not one of {', '.join(POSITIONS)}")
        if known_step_types is not None and extra.type not in known_step_types:
            raise PlanningError(
                f"{where}: step {extra.id} has type {extra.type!r}, which no installed step type provides "
                f"(known: {', '.join(sorted(known_step_types))})"
            )
    has_config = bool(declaration.template is not None or declaration.template_lines or declaration.template_file
                      or declaration.config_url)
    if any(e.position == "after-config" for e in declaration.steps) and declaration.reload and has_config:
        raise PlanningError(
            f"{where}: a step after the configuration never runs when the configuration reloads the device "
            "(PnP stops once a startup configuration exists): set config/reload false or move the step before-config"
        )
    if not has_config and not declaration.steps and not declaration.commands:
        raise PlanningError(
            f"{where}: declares no configuration, so it would read provisioned having been sent none: give it "
            "config/template (or config line entries, config/template-file, config/url)"
        )
    if declaration.handoff is not None and (declaration.reload or declaration.apply_to != "running" or not has_config):
        raise PlanningError(
            f"{where}: a device handed to the controller gets its configuration applied to running without a reload "
            "(its host key is read and the configuration saved afterwards): declare a config with apply-to running "
            "and reload false"
        )


def _canonical(declaration: Declaration) -> list:
    return [[field.name, getattr(declaration, field.name)] for field in dataclasses.fields(declaration)]


def revision_of(declaration: Declaration, template: str | None, steps: Sequence[Step]) -> str:
    """A digest of what the plan is made of: equal inputs, equal revisions, in whatever process."""
    canonical = json.dumps(
        [PLAN_FORMAT, _canonical(declaration), template, [[s.id, s.type, sorted(s.params.items())] for s in steps]],
        separators=(",", ":"),
        ensure_ascii=False,
        default=lambda value: dataclasses.astuple(value),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def plan(
    declaration: Declaration,
    load_template: TemplateLoader = _no_template_files,
    known_step_types: Collection[str] | None = None,
    context: Mapping[str, object] | None = None,
) -> Work:
    """Plan one declaration.  Raises :class:`PlanningError` naming the device and what to fix.

    ``known_step_types``: the registered step type names, to refuse an extra step
    nothing can run (None: not checked).
    """
    if not declaration.serial:
        raise PlanningError("pnp-device without a serial")
    if declaration.has_image and not declaration.image_md5:
        raise PlanningError(f"pnp-device {declaration.serial}: image/md5 is required with image/url")
    _check_extra_steps(declaration, known_step_types)
    template = template_source(declaration, load_template)
    config = None if template is None else _render(declaration, template, "template", context)
    steps = tuple(_steps(declaration, config, context))
    without_handoff = dataclasses.replace(declaration, handoff=None)
    return Work(revision_of(declaration, template, steps), steps, revision_of(without_handoff, template, steps))


__all__ = ["ExtraStep", "PlanningError", "plan", "render_config", "revision_of", "template_variables"]
