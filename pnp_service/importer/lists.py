"""A device list's values, problems and levels: what every source of declarations shares.

Owns where a value was written (:class:`Where`), the problems collected on the way (each naming the file, the
line and the field), checking one level of values (defaults, a group, a device), and merging the levels into a
:class:`~pnp_service.model.Declaration`: ``defaults``, then each group a device names (in order), then the
device's own values, later levels winning and variables merged name by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from typing import Any, Iterable, Mapping, Sequence

from .. import validation
from ..model import Declaration, is_serial
from ..neighbours import Location
from ..xmlsafe import decimal


FIELDS = ("pid", "hostname", "template", "lines", "template-file", "config-url", "apply-to", "reload", "image",
          "username", "password", "commands", "variables")
#: The four ways to give the configuration; a level that sets one replaces whichever an earlier level set.
SOURCES = ("template", "lines", "template-file", "config-url")
IMAGE_FIELDS = ("version", "url", "md5", "reload-wait")
#: CSV columns that are fields; every variable column is ``var.NAME`` or ``var.NAME:TYPE``.
CSV_FIELDS = ("serial", "location", "group", "pid", "hostname", "template", "template-file", "config-url", "apply-to", "reload",
              "image-version", "image-url", "image-md5", "image-reload-wait", "username", "password")
VARIABLE_TYPES = ("string", "number", "boolean", "list")
BUILTIN_VARIABLES = ("serial", "hostname", "pid")
#: Separators of several group names in a CSV ``group`` cell (applied in order).
GROUP_SEPARATORS = re.compile(r"[;|]")
LINE_STEP = 10  # template lines and commands given as a list are numbered 10, 20, 30, ...

_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TEMPLATE_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_MD5 = re.compile(r"[0-9a-f]{32}")
_MAX_ERRORS = 50


# --------------------------------------------------------------------------- problems


@dataclasses.dataclass(frozen=True)
class Where:
    """A place in the operator's input: a file and, when known, a line."""

    source: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.source}:{self.line}" if self.line else self.source


@dataclasses.dataclass(frozen=True)
class Problem:
    where: Where
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class ImportFailed(ValueError):
    """The input cannot become declarations; each problem names the file, the line and what to fix."""

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(dict.fromkeys(problems))  # one copy of each, in order
        super().__init__("; ".join(str(p) for p in self.problems))

    def lines(self, limit: int = _MAX_ERRORS) -> list[str]:
        shown = [str(p) for p in self.problems[:limit]]
        if len(self.problems) > limit:
            shown.append(f"... and {len(self.problems) - limit} more problems")
        return shown


class _Problems(list[Problem]):
    def add(self, where: Where, field: str, message: str) -> None:
        self.append(Problem(where, f"{field}: {message}" if field else message))

    def raise_any(self) -> None:
        if self:  # in the order of the input, whatever pass found them
            raise ImportFailed(sorted(self, key=lambda p: (p.where.source, p.where.line or 0)))


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


# --------------------------------------------------------------------------- values as written

@dataclasses.dataclass(frozen=True)
class Value:
    """One value of the input: ``data`` as YAML typed it (str, int, float, bool, None, list or dict of Values),
    ``text`` as it was written (scalars), and its line."""

    data: Any
    text: str
    line: int | None

    @property
    def is_scalar(self) -> bool:
        return not isinstance(self.data, (list, dict))


def _kind(value: Value) -> str:
    return "a list" if isinstance(value.data, list) else "a mapping" if isinstance(value.data, dict) else "a value"


@dataclasses.dataclass(frozen=True)
class Image:
    version: str
    url: str
    md5: str
    reload_wait: int = 60


@dataclasses.dataclass(frozen=True)
class Layer:
    """What one level (``defaults``, a group, a device) sets, already checked.  None clears an earlier level's value."""

    where: Where
    values: Mapping[str, Any]
    variables: Mapping[str, tuple[str, str] | None]  # name -> (value, type), or None to clear


@dataclasses.dataclass(frozen=True)
class Groups:
    """``defaults`` (of every file that gave some, in order) and the named groups."""

    defaults: tuple[Layer, ...] = ()
    groups: Mapping[str, Layer] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Entry:
    where: Where
    serial: str | None
    groups: tuple[str, ...]
    layer: Layer
    #: A switch declared by location instead (serial ""): the upstream device and port, as written.
    location: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Imported:
    """A declaration and where the operator wrote it (for messages about it later)."""

    declaration: Declaration
    where: Where

    @property
    def key(self) -> str:
        """What names it: its serial, or its location (``NEIGHBOR PORT``)."""
        return self.declaration.serial or " ".join(self.declaration.located)


# --------------------------------------------------------------------------- checking one level

def _text(value: Value, field: str, where: Where, problems: _Problems) -> str | None:
    """A text field: the scalar as written (so 17.10 stays 17.10 and an MD5 of digits keeps its zeros)."""
    if not value.is_scalar:
        problems.add(where, field, f"must be text, not {_kind(value)}")
        return None
    return None if value.data is None else value.text


def _bad_characters(text: str, *, multiline: bool) -> bool:
    return any(not (ch.isprintable() or (multiline and ch in "\n\t")) for ch in text)


class _Bad:
    """A value that was refused (the problem is recorded); the field is left out."""


_BAD = _Bad()


def _field(name: str, value: Value, where: Where, problems: _Problems) -> Any:
    """Check one field's value; returns the value to record, None to clear, or _BAD."""
    at = Where(where.source, value.line or where.line)
    count = len(problems)

    def fail(message: str) -> _Bad:
        problems.add(at, name, message)
        return _BAD

    if name in ("commands", "lines"):
        return _numbered(name, value, at, problems)
    if name == "image":
        return _image(value, at, problems)
    if name == "reload":
        if isinstance(value.data, bool):
            return value.data
        text = _text(value, name, at, problems)
        if text is None:
            return None if len(problems) == count else _BAD
        flag = text.strip().lower()
        if flag in ("true", "yes", "1"):
            return True
        if flag in ("false", "no", "0"):
            return False
        return fail(f"{text!r} is not true or false")
    text = _text(value, name, at, problems)
    if len(problems) != count:
        return _BAD
    if text is None or (text == "" and name != "template"):
        return None
    multiline = name == "template"
    if _bad_characters(text, multiline=multiline):
        return fail("has control characters" + ("" if multiline else " (line breaks belong in a template only)"))
    if name != "template":
        text = text.strip()
    if name == "pid" and len(text) > 64:
        return fail(f"{text!r} is longer than 64 characters")
    if name == "hostname" and len(text) > 63:
        return fail(f"{text!r} is longer than 63 characters")
    if name == "template-file" and not _TEMPLATE_FILE.fullmatch(text):
        return fail(f"{text!r} is not a plain file name (letters, digits, . _ -; in the templates folder)")
    if name == "apply-to" and text not in ("startup", "running"):
        return fail(f"{text!r} is not startup or running")
    if name == "config-url" and (any(ch.isspace() for ch in text) or ":" not in text):
        return fail(f"{text!r} is not a URL")
    return text


def _numbered(name: str, value: Value, at: Where, problems: _Problems) -> Any:
    """``commands`` and ``lines``: a list (numbered 10, 20, ...) or a mapping number -> text."""
    if value.data is None:
        return None
    pairs: list[tuple[str, Value]]
    if isinstance(value.data, list):
        pairs = [(str(LINE_STEP * (index + 1)), item) for index, item in enumerate(value.data)]
    elif isinstance(value.data, dict):
        pairs = list(value.data.items())
    elif name == "lines":  # one block of text: its lines
        pairs = [(str(LINE_STEP * (i + 1)), Value(t, t, value.line)) for i, t in enumerate(str(value.data).splitlines())]
    else:
        problems.add(at, name, "must be a list of commands (or a mapping seq: command)")
        return _BAD
    out: list[tuple[int, str]] = []
    for key, item in pairs:
        where = Where(at.source, item.line or at.line)
        number = decimal(key)
        if number is None or number > 0xFFFFFFFF:
            problems.add(where, name, f"{key!r} is not a number (0 to 4294967295)")
            continue
        if not item.is_scalar:
            problems.add(where, f"{name} {key}", f"must be text, not {_kind(item)}")
            continue
        text = "" if item.data is None else item.text
        if _bad_characters(text, multiline=False):
            problems.add(where, f"{name} {key}", "has control characters (one line each)")
            continue
        if name == "commands" and not text.strip():
            problems.add(where, f"{name} {key}", "is empty")
            continue
        out.append((number, text.strip() if name == "commands" else text))
    return tuple(sorted(out))


def _image(value: Value, at: Where, problems: _Problems) -> Any:
    if value.data is None:
        return None
    if not isinstance(value.data, dict):
        problems.add(at, "image", "must be a mapping of version, url, md5 (and reload-wait)")
        return _BAD
    count = len(problems)
    parts: dict[str, str] = {}
    for key, item in value.data.items():
        where = Where(at.source, item.line or at.line)
        if key not in IMAGE_FIELDS:
            problems.add(where, f"image {key}", f"is not an image field: {', '.join(IMAGE_FIELDS)}{_suggest(key, IMAGE_FIELDS)}")
            continue
        text = _text(item, f"image {key}", where, problems)
        if text is not None and text.strip():
            parts[key] = text.strip()
    missing = [key for key in ("version", "url", "md5") if key not in parts]
    if missing:
        problems.add(at, "image", f"needs {', '.join(missing)} too (an image is given whole: version, url and md5)")
    md5 = parts.get("md5", "").lower()
    if md5 and not _MD5.fullmatch(md5):
        problems.add(at, "image md5", f"{parts['md5']!r} is not an MD5 (32 hexadecimal digits)")
    reload_wait = 60
    if "reload-wait" in parts:
        text = parts["reload-wait"]
        seconds = decimal(text)
        if seconds is None or not 10 <= seconds <= 3600:
            problems.add(at, "image reload-wait", f"{text!r} is not a number of seconds from 10 to 3600")
        else:
            reload_wait = seconds
    if any(_bad_characters(text, multiline=False) for text in parts.values()):
        problems.add(at, "image", "has control characters")
    if len(problems) != count:
        return _BAD
    return Image(parts["version"], parts["url"], md5, reload_wait)


def _variable_name(name: str, where: Where, problems: _Problems) -> bool:
    if not _VARIABLE_NAME.fullmatch(name):
        problems.add(where, f"variable {name!r}", "is not a variable name (a letter or _, then letters, digits, _)")
        return False
    if name in BUILTIN_VARIABLES:
        problems.add(where, f"variable {name}", f"{name} is built in: set the {name} field instead" if name != "serial"
                     else "serial is built in (the device's serial)")
        return False
    return True


def _yaml_variable(name: str, value: Value, where: Where, problems: _Problems) -> tuple[str, str] | None | _Bad:
    """A YAML variable: strings stay strings; numbers, booleans and lists become typed variables."""
    data = value.data
    if data is None:
        return None
    if isinstance(data, dict):
        problems.add(where, f"variable {name}", "is a mapping; a variable is text, a number, a boolean or a list")
        return _BAD
    if isinstance(data, bool):
        return ("true" if data else "false", "boolean")
    if isinstance(data, (int, float)):
        return (repr(data) if isinstance(data, float) else str(data), "number")
    if isinstance(data, list):
        items = []
        for item in data:
            if not item.is_scalar or item.data is None:
                problems.add(Where(where.source, item.line or where.line), f"variable {name}",
                             "list items must be text, numbers or booleans")
                return _BAD
            items.append(item.data if isinstance(item.data, (bool, int, float)) else item.text)
        return (list_value(items), "list")
    if _bad_characters(value.text, multiline=True):
        problems.add(where, f"variable {name}", "has control characters")
        return _BAD
    return (value.text, "string")


def list_value(items: Sequence[Any]) -> str:
    """A list variable's value: ``a,b,c`` when that reads back the same, else a JSON array."""
    simple = all(isinstance(i, str) and i and i == i.strip() and "," not in i for i in items)
    if simple and items and not items[0].startswith("["):
        return ",".join(items)
    return json.dumps(list(items), ensure_ascii=False)


def _layer(items: Mapping[str, Value], where: Where, problems: _Problems, *, what: str,
           variables: Mapping[str, tuple[str, str] | None] | None = None) -> Layer:
    """Check the fields one level sets (``what`` names the level in messages about unknown keys)."""
    values: dict[str, Any] = {}
    found_variables: dict[str, tuple[str, str] | None] = dict(variables or {})
    sources = [name for name in SOURCES if name in items]
    if len(sources) > 1:
        problems.add(where, " and ".join(sources), "give one of " + ", ".join(SOURCES))
    for name, value in items.items():
        at = Where(where.source, value.line or where.line)
        if name == "variables":
            if value.data is None:
                continue
            if not isinstance(value.data, dict):
                problems.add(at, "variables", "must be a mapping of name: value")
                continue
            for variable, item in value.data.items():
                item_at = Where(where.source, item.line or at.line)
                if _variable_name(variable, item_at, problems):
                    typed = _yaml_variable(variable, item, item_at, problems)
                    if not isinstance(typed, _Bad):
                        found_variables[variable] = typed
            continue
        if name not in FIELDS:
            problems.add(at, name, f"is not a field of {what}{_suggest(name, FIELDS)}")
            continue
        checked = _field(name, value, where, problems)
        if isinstance(checked, _Bad):
            continue
        if name in SOURCES:
            values["source"] = None if checked is None else (name, checked)
        else:
            values[name] = checked
    return Layer(where, values, found_variables)


# --------------------------------------------------------------------------- merging levels into declarations


def _merge(layers: Sequence[Layer]) -> tuple[dict[str, Any], dict[str, tuple[str, str]]]:
    values: dict[str, Any] = {}
    variables: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for name, value in layer.values.items():
            if value is None:
                values.pop(name, None)
            else:
                values[name] = value
        for name, typed in layer.variables.items():
            if typed is None:
                variables.pop(name, None)
            else:
                variables[name] = typed
    return values, variables


def _declaration(serial: str, values: Mapping[str, Any], variables: Mapping[str, tuple[str, str]]) -> Declaration:
    source: dict[str, Any] = {}
    if values.get("source"):
        kind, content = values["source"]
        key = {"template": "template", "lines": "template_lines", "template-file": "template_file",
               "config-url": "config_url"}[kind]
        source[key] = content
    image: Image | None = values.get("image")
    return Declaration(
        serial=serial,
        pid=values.get("pid", ""),
        hostname=values.get("hostname", ""),
        apply_to=values.get("apply-to", "startup"),
        reload=values.get("reload", True),
        variables=tuple((name, value) for name, (value, _) in variables.items()),
        variable_types=tuple((name, kind) for name, (_, kind) in variables.items() if kind != "string"),
        commands=values.get("commands", ()),
        image_version=image.version if image else "",
        image_url=image.url if image else "",
        image_md5=image.md5 if image else "",
        image_reload_wait=image.reload_wait if image else 60,
        username=values.get("username", ""),
        password=values.get("password", ""),
        **source,
    )


def _build(entries: Sequence[_Entry], groups: Groups, problems: _Problems) -> list[Imported]:
    found: list[Imported] = []
    seen: dict[object, Where] = {}
    for entry in entries:
        if entry.serial is None:
            continue
        key: object = Location(*entry.location) if entry.location else entry.serial  # one port, however spelled
        if key in seen:
            first = seen[key]
            what = f"location {' '.join(entry.location)}" if entry.location else entry.serial
            problems.add(entry.where, "location" if entry.location else "serial",
                         f"{what} is listed twice (first at {first})")
            continue
        seen[key] = entry.where
        layers = list(groups.defaults)
        known = True
        for name in entry.groups:
            if name not in groups.groups:
                defined = ", ".join(sorted(groups.groups)) or "none"
                problems.add(entry.where, "group", f"{name!r} is not defined (groups: {defined}){_suggest(name, groups.groups)}")
                known = False
            else:
                layers.append(groups.groups[name])
        if not known:
            continue
        layers.append(entry.layer)
        declaration = _declaration(entry.serial, *_merge(layers))
        if entry.location:
            declaration = dataclasses.replace(declaration, located=entry.location)
        found.append(Imported(declaration, entry.where))
    problems.raise_any()
    return found


_LOCATION_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
_LOCATION_PORT = re.compile(r"[A-Za-z0-9._:/-]{1,128}")


def _location(value: Value, where: Where, problems: _Problems) -> tuple[str, str] | None:
    """A ``location`` cell: ``NEIGHBOR:PORT`` or ``NEIGHBOR PORT`` (dist-sw-1:Gi1/0/48)."""
    text = (_text(value, "location", where, problems) or "").strip()
    neighbor, _, port = text.partition(" ") if " " in text else text.partition(":")
    neighbor, port = neighbor.strip(), port.strip()
    if not (_LOCATION_NAME.fullmatch(neighbor) and _LOCATION_PORT.fullmatch(port)):
        problems.add(where, "location", f"{text!r} is not NEIGHBOR:PORT (the upstream device's name and the port the "
                     "switch is cabled to, for example dist-sw-1:Gi1/0/48)")
        return None
    return neighbor, port


def _serial(value: Value | None, where: Where, problems: _Problems) -> str | None:
    if value is None or value.data is None or (value.is_scalar and not value.text.strip()):
        problems.add(where, "serial", "is required")
        return None
    text = _text(value, "serial", where, problems)
    if text is None:
        return None
    if not is_serial(text.strip()):
        problems.add(Where(where.source, value.line or where.line), "serial",
                     f"{text!r} is not a serial number (a letter or digit, then up to 63 letters, digits, . _ -)")
        return None
    return text.strip()


_SERIAL_IN_PATH = re.compile(r"pnp-device\[serial='([^']*)'\]")


def yang_problems(exc: validation.DeclarationsError, where: Mapping[str, Where], source: str,
                   lines: bool) -> ImportFailed:
    """libyang's messages about a generated document, each told at the place its device was written (``source``,
    with libyang's line when ``lines``, when no device is named)."""
    problems = []
    for problem in exc.problems:
        found = _SERIAL_IN_PATH.search(problem.path)
        at = where[found.group(1)] if found and found.group(1) in where else \
            Where(source, problem.line) if lines else Where(source)
        problems.append(Problem(at, problem.message + (f" (at {problem.path})" if problem.path else "")))
    return ImportFailed(problems)
