"""Planner: a declaration becomes an ordered list of steps with a revision digest.

Owns template rendering (Jinja2, sandboxed, StrictUndefined) and the order of
the built-in steps: device-info, image-install, cli-exec commands,
config-upgrade.  Pure functions: the only input besides the declaration is a
template loader for ``config/template-file``.  The same code runs in the
controller's service module and in the embedded-datastore listener.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from typing import Callable, Iterable, Sequence

import jinja2
import jinja2.sandbox

from .model import Declaration, Step, Work

#: Bump when the plan format changes, so every device re-plans.
PLAN_FORMAT = "1"

DEFAULT_TEMPLATE_DIRS = ("/usr/local/share/pnp-service/templates",)
_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")

TemplateLoader = Callable[[str], str]


class PlanningError(ValueError):
    """A declaration that cannot be planned; the message names the device and what to fix."""


def file_template_loader(directories: Sequence[str] = DEFAULT_TEMPLATE_DIRS) -> TemplateLoader:
    """Load ``config/template-file`` names from the first directory that has them."""

    def load(name: str) -> str:
        if not _TEMPLATE_FILE.fullmatch(name):
            raise LookupError(f"template file name {name!r} is not a plain file name")
        for directory in directories:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as handle:
                    return handle.read()
        raise LookupError(f"template file {name!r} not found in {', '.join(directories)}")

    return load


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


def template_variables(declaration: Declaration) -> dict[str, str]:
    """Declared variables, then the built-ins ``hostname``, ``serial`` and ``pid``, which win."""
    variables = dict(declaration.variables)
    variables.update(hostname=declaration.hostname, serial=declaration.serial, pid=declaration.pid)
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


def render_config(declaration: Declaration, load_template: TemplateLoader = _no_template_files) -> str | None:
    """Render the declaration's template; None when there is none."""
    source = template_source(declaration, load_template)
    if source is None:
        return None
    where = f"pnp-device {declaration.serial}"
    try:
        return _compiled(source).render(template_variables(declaration))
    except jinja2.UndefinedError as exc:
        raise PlanningError(f"{where}: template variable {exc.message} (declare it under variable)") from None
    except jinja2.TemplateSyntaxError as exc:
        raise PlanningError(f"{where}: template syntax error on line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise PlanningError(f"{where}: template error: {exc}") from None


def _steps(declaration: Declaration, config: str | None) -> Iterable[Step]:
    yield Step("device-info", "device-info", {"expect-pid": declaration.pid} if declaration.pid else {})
    if declaration.has_image:
        yield Step(
            "image-install",
            "image-install",
            {
                "version": declaration.image_version,
                "location": declaration.image_url,
                "checksum": declaration.image_md5,
                "reload-wait": str(declaration.image_reload_wait),
            },
        )
    for seq, command in sorted(declaration.commands):
        yield Step(f"cli-exec-{seq}", "cli-exec", {"command": command})
    if config is not None or declaration.config_url:
        params = {"apply-to": declaration.apply_to, "reload": "true" if declaration.reload else "false"}
        if config is not None:
            params["config"] = config
        else:
            params["url"] = declaration.config_url
        yield Step("config-upgrade", "config-upgrade", params)


def revision_of(steps: Sequence[Step]) -> str:
    """A digest of the plan: equal plans have equal revisions, whatever process made them."""
    canonical = json.dumps(
        [PLAN_FORMAT, [[step.id, step.type, sorted(step.params.items())] for step in steps]],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def plan(declaration: Declaration, load_template: TemplateLoader = _no_template_files) -> Work:
    """Plan one declaration.  Raises :class:`PlanningError` naming the device."""
    if not declaration.serial:
        raise PlanningError("pnp-device without a serial")
    if declaration.has_image and not declaration.image_md5:
        raise PlanningError(f"pnp-device {declaration.serial}: image/md5 is required with image/url")
    steps = tuple(_steps(declaration, render_config(declaration, load_template)))
    return Work(revision_of(steps), steps)
