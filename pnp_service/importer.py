"""Operator imports: device lists (CSV, YAML) and unclaimed devices become declarations, in three written forms.

Owns reading an operator's device list into :class:`~pnp_service.model.Declaration` values: ``defaults``,
then each group a device names (in order), then the device's own values, later levels winning and variables
merged name by name; YAML types become typed variables, a CSV header may carry one (``var.vlan:number``).
Every problem is collected, each naming the file, the line and the field, before anything is handed on.  The
result is checked as ``pnp-service check`` checks a file: against the YANG with libyang
(:func:`pnp_service.validation.load`) and planned (:func:`pnp_service.planner.plan`).

Also owns the three forms a set of declarations is handed out in: a declarations file (new, or merged into an
existing one, its comments and other declarations kept), a ``clixon_cli`` script, and a NETCONF
``edit-config`` body.  Pure: text in, text or bytes out.  Reading and writing files is the command line's job.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import json
import re
from typing import Any, Collection, Iterable, Mapping, Sequence

import yaml
from lxml import etree

from . import validation
from .model import (
    CONTROLLER_NS,
    NETCONF_NS,
    SERVICE_NAME,
    Declaration,
    Unclaimed,
    child_text,
    declaration_to_xml,
    is_serial,
    q,
)
from .planner import PlanningError, TemplateLoader, plan, typed_value
from .xmlsafe import decimal, parser, qname

#: Fields a device, a group or ``defaults`` may set (YAML keys and CSV columns; ``image`` is a mapping in YAML).
FIELDS = ("pid", "hostname", "template", "lines", "template-file", "config-url", "apply-to", "reload", "image",
          "username", "password", "commands", "variables")
#: The four ways to give the configuration; a level that sets one replaces whichever an earlier level set.
SOURCES = ("template", "lines", "template-file", "config-url")
IMAGE_FIELDS = ("version", "url", "md5", "reload-wait")
#: CSV columns that are fields; every variable column is ``var.NAME`` or ``var.NAME:TYPE``.
CSV_FIELDS = ("serial", "group", "pid", "hostname", "template", "template-file", "config-url", "apply-to", "reload",
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


@dataclasses.dataclass(frozen=True)
class Imported:
    """A declaration and where the operator wrote it (for messages about it later)."""

    declaration: Declaration
    where: Where


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
    seen: dict[str, Where] = {}
    for entry in entries:
        if entry.serial is None:
            continue
        if entry.serial in seen:
            first = seen[entry.serial]
            problems.add(entry.where, "serial", f"{entry.serial} is listed twice (first at {first})")
            continue
        seen[entry.serial] = entry.where
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
        found.append(Imported(_declaration(entry.serial, *_merge(layers)), entry.where))
    problems.raise_any()
    return found


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


# --------------------------------------------------------------------------- YAML


def _yaml(text: str, source: str) -> Value:
    """The document as :class:`Value` trees (lines kept, duplicate keys refused)."""
    loader = yaml.SafeLoader(text)
    problems = _Problems()
    budget = [1_000_000]  # aliases can make a small file a huge tree

    def convert(node: yaml.Node, depth: int) -> Value:
        budget[0] -= 1
        line = node.start_mark.line + 1
        if depth > 32 or budget[0] < 0:
            raise ImportFailed([Problem(Where(source, line), "nested too deeply (or aliases that expand too far)")])
        if isinstance(node, yaml.ScalarNode):
            data = loader.construct_object(node)
            if not isinstance(data, (str, int, float, bool, type(None))):
                data = node.value  # dates, binary: the text as written
            return Value(data, node.value, line)
        if isinstance(node, yaml.SequenceNode):
            return Value([convert(child, depth + 1) for child in node.value], "", line)
        assert isinstance(node, yaml.MappingNode)
        loader.flatten_mapping(node)  # YAML merge keys (<<: *defaults)
        mapping: dict[str, Value] = {}
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.add(Where(source, key_line), "", "a key must be a plain name")
                continue
            key = key_node.value
            if key in mapping:
                problems.add(Where(source, key_line), key, f"is given twice (first on line {mapping[key].line})")
                continue
            child = convert(value_node, depth + 1)
            mapping[key] = Value(child.data, child.text, key_line)  # messages point at the key
        return Value(mapping, "", line)

    try:
        node = loader.get_single_node()
        tree = Value({}, "", 1) if node is None else convert(node, 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(filter(None, (exc.context, exc.problem))) or str(exc)
        raise ImportFailed([Problem(Where(source, mark.line + 1 if mark else None), f"not valid YAML: {message}")]) from None
    except yaml.YAMLError as exc:
        raise ImportFailed([Problem(Where(source), f"not valid YAML: {exc}")]) from None
    finally:
        loader.dispose()
    problems.raise_any()
    return tree


def _groups_of(document: Mapping[str, Value], source: str, problems: _Problems) -> Groups:
    defaults: tuple[Layer, ...] = ()
    named: dict[str, Layer] = {}
    if "defaults" in document:
        value = document["defaults"]
        if isinstance(value.data, dict):
            defaults = (_layer(value.data, Where(source, value.line), problems, what="defaults"),)
        elif value.data is not None:
            problems.add(Where(source, value.line), "defaults", "must be a mapping of fields")
    if "groups" in document:
        value = document["groups"]
        if isinstance(value.data, dict):
            for name, body in value.data.items():
                where = Where(source, body.line)
                if isinstance(body.data, dict):
                    if "serial" in body.data or "group" in body.data:
                        key = "serial" if "serial" in body.data else "group"
                        problems.add(where, f"group {name}", f"a group cannot set {key}")
                    fields = {k: v for k, v in body.data.items() if k not in ("serial", "group")}
                    named[name] = _layer(fields, where, problems, what=f"group {name}")
                elif body.data is None:
                    named[name] = Layer(where, {}, {})
                else:
                    problems.add(where, f"group {name}", "must be a mapping of fields")
        elif value.data is not None:
            problems.add(Where(source, value.line), "groups", "must be a mapping of group name: fields")
    return Groups(defaults, named)


def _top(text: str, source: str, allowed: Collection[str]) -> Mapping[str, Value]:
    tree = _yaml(text, source)
    if not isinstance(tree.data, dict):
        raise ImportFailed([Problem(Where(source, tree.line), f"expected a mapping with {', '.join(allowed)}")])
    unknown = [key for key in tree.data if key not in allowed]
    if unknown:
        raise ImportFailed([Problem(Where(source, tree.data[key].line), f"{key}: is not one of {', '.join(allowed)}"
                                    f"{_suggest(key, allowed)}") for key in unknown])
    return tree.data


def load_groups(text: str, source: str) -> Groups:
    """A ``--groups`` file: ``defaults:`` and ``groups:`` (name -> fields)."""
    problems = _Problems()
    groups = _groups_of(_top(text, source, ("defaults", "groups")), source, problems)
    problems.raise_any()
    return groups


def _combine(first: Groups | None, second: Groups, problems: _Problems) -> Groups:
    if first is None:
        return second
    for name in set(first.groups) & set(second.groups):
        problems.add(second.groups[name].where, f"group {name}", f"is defined in {first.groups[name].where} too")
    return Groups(first.defaults + second.defaults, {**first.groups, **second.groups})


def devices_from_yaml(text: str, source: str, groups: Groups | None = None) -> list[Imported]:
    """Declarations from a YAML file of ``defaults``, ``groups`` and ``devices`` (``groups`` adds a --groups file)."""
    problems = _Problems()
    document = _top(text, source, ("defaults", "groups", "devices"))
    combined = _combine(groups, _groups_of(document, source, problems), problems)
    entries: list[_Entry] = []
    devices = document.get("devices")
    if devices is None or not isinstance(devices.data, list):
        problems.add(Where(source, devices.line if devices else None), "devices", "must be a list of devices")
        problems.raise_any()
    assert devices is not None
    for item in devices.data:
        where = Where(source, item.line)
        if not isinstance(item.data, dict):
            problems.add(where, "devices", "each device is a mapping with at least serial")
            continue
        fields = dict(item.data)
        serial = _serial(fields.pop("serial", None), where, problems)
        names: tuple[str, ...] = ()
        group = fields.pop("group", None)
        if group is not None and group.data is not None:
            listed = group.data if isinstance(group.data, list) else [group]
            texts = [_text(v, "group", Where(source, v.line), problems) for v in listed]
            names = tuple(t.strip() for t in texts if t and t.strip())
        entries.append(_Entry(where, serial, names, _layer(fields, where, problems, what="a device")))
    return _build(entries, combined, problems)  # reports the devices' problems with its own


# --------------------------------------------------------------------------- CSV


def _delimiter(first_line: str) -> str:
    """``,`` unless the header row is separated by ``;`` or tabs (spreadsheets in many locales)."""
    counts = {d: first_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


@dataclasses.dataclass(frozen=True)
class _Column:
    kind: str  # field | variable
    name: str
    type: str = "string"


def _columns(header: Sequence[str], where: Where, problems: _Problems) -> list[_Column | None]:
    columns: list[_Column | None] = []
    seen: set[tuple[str, str]] = set()
    for cell in header:
        name = cell.strip()
        column: _Column | None = None
        if name.lower().startswith("var."):
            variable, _, kind = name[4:].partition(":")
            kind = kind.strip().lower() or "string"
            if kind not in VARIABLE_TYPES:
                problems.add(where, f"column {name}", f"type {kind!r} is not one of {', '.join(VARIABLE_TYPES)}")
            elif _variable_name(variable.strip(), where, problems):
                column = _Column("variable", variable.strip(), kind)
        elif name.lower().replace("_", "-") in CSV_FIELDS:
            column = _Column("field", name.lower().replace("_", "-"))
        elif name:
            problems.add(where, f"column {name!r}", "is not a field; a variable column is var.NAME (or var.NAME:TYPE, "
                         f"TYPE one of {', '.join(VARIABLE_TYPES)}){_suggest(name.lower(), CSV_FIELDS)}")
        if column is not None:
            key = (column.kind, column.name)
            if key in seen:
                problems.add(where, f"column {name}", "is given twice")
            seen.add(key)
        columns.append(column)
    if not any(c is not None and c.name == "serial" and c.kind == "field" for c in columns):
        problems.add(where, "serial", "the header has no serial column")
    return columns


def _csv_variable(column: _Column, cell: str, where: Where, problems: _Problems) -> tuple[str, str] | None:
    text = cell.strip()
    try:
        checked = typed_value(column.name, text, column.type)
    except PlanningError as exc:
        problems.add(where, f"var.{column.name}", str(exc))
        return None
    if column.type == "boolean":
        text = "true" if checked else "false"
    return (text, column.type)


def devices_from_csv(text: str, source: str, groups: Groups | None = None) -> list[Imported]:
    """Declarations from CSV: a header row, one device a row; ``groups`` gives the defaults and the named groups."""
    problems = _Problems()
    groups = groups or Groups()
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text.split("\n", 1)[0]), strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise ImportFailed([Problem(Where(source, 1), f"not valid CSV: {exc}")]) from None
    if header is None:
        raise ImportFailed([Problem(Where(source), "empty: expected a header row (serial, hostname, ...)")])
    columns = _columns(header, Where(source, 1), problems)
    problems.raise_any()
    entries: list[_Entry] = []
    line = reader.line_num + 1
    while True:
        try:
            row = next(reader, None)
        except csv.Error as exc:
            problems.add(Where(source, line), "", f"not valid CSV: {exc}")
            break
        if row is None:
            break
        where, line = Where(source, line), reader.line_num + 1
        if not any(cell.strip() for cell in row):
            continue  # blank rows
        if len(row) > len(columns) and any(cell.strip() for cell in row[len(columns):]):
            problems.add(where, "", f"the row has {len(row)} cells, the header {len(columns)}")
            continue
        fields: dict[str, Value] = {}
        image: dict[str, Value] = {}
        variables: dict[str, tuple[str, str] | None] = {}
        for column, cell in zip(columns, row):
            if column is None or not cell.strip():
                continue
            raw = cell if column.name == "template" else cell.strip()  # a template keeps its blanks
            value = Value(raw, raw, where.line)
            if column.kind == "variable":
                typed = _csv_variable(column, cell, where, problems)
                if typed is not None:
                    variables[column.name] = typed
            elif column.name.startswith("image-"):
                image[column.name[len("image-"):]] = value
            else:
                fields[column.name] = value
        if image:
            fields["image"] = Value(image, "", where.line)
        serial = _serial(fields.pop("serial", None), where, problems)
        group = fields.pop("group", None)
        names = tuple(n.strip() for n in GROUP_SEPARATORS.split(group.text) if n.strip()) if group else ()
        entries.append(_Entry(where, serial, names, _layer(fields, where, problems, what="a device",
                                                           variables=variables)))
    return _build(entries, groups, problems)  # reports the rows' problems with its own


# --------------------------------------------------------------------------- claim


def claimed(unclaimed: Sequence[Unclaimed], groups: Groups | None = None, group_names: Sequence[str] = (),
            hostname: str = "", template_file: str = "", variables: Sequence[str] = ()) -> list[Imported]:
    """Declarations for devices that called in undeclared: ``defaults``, the groups named, then the serial and
    the PID each device reported, and what the command line gives (``hostname``, ``template_file``, and
    ``variables`` written ``NAME=VALUE`` or ``NAME:TYPE=VALUE``, as a CSV header types them)."""
    problems = _Problems()
    given = _claimed_variables(variables, problems)
    entries = []
    for entry in unclaimed:
        where = Where(f"claim {entry.serial}")
        fields = {"pid": Value(entry.pid, entry.pid, None)} if entry.pid else {}
        if hostname:
            fields["hostname"] = Value(hostname, hostname, None)
        if template_file:
            fields["template-file"] = Value(template_file, template_file, None)
        layer = _layer(fields, where, problems, what="a claim", variables=given)
        entries.append(_Entry(where, entry.serial, tuple(group_names), layer))
    problems.raise_any()
    return _build(entries, groups or Groups(), problems)


def _claimed_variables(variables: Sequence[str], problems: _Problems) -> dict[str, tuple[str, str] | None]:
    found: dict[str, tuple[str, str] | None] = {}
    for text in variables:
        where = Where(f"--var {text}")
        name, equals, value = text.partition("=")
        if not equals:
            problems.add(where, "--var", "write it NAME=VALUE (or NAME:TYPE=VALUE)")
            continue
        column = _columns([f"var.{name}", "serial"], where, problems)[0]
        if column is not None:
            found[column.name] = _csv_variable(column, value, where, problems)
    return found


# --------------------------------------------------------------------------- checking the result


_SERIAL_IN_PATH = re.compile(r"pnp-device\[serial='([^']*)'\]")


def _yang_problems(exc: validation.DeclarationsError, where: Mapping[str, Where], source: str,
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


def verify(imported: Sequence[Imported], source: str, load_template: TemplateLoader,
           known_step_types: Collection[str] | None = None, context: Mapping[str, object] | None = None) -> None:
    """Check the declarations as ``pnp-service check`` does: the YANG (libyang), then planning each one.

    libyang's messages are about the generated file: each is told at the place the device was written
    (``source`` when no device is named).
    """
    where = {item.declaration.serial: item.where for item in imported}
    try:
        validation.load(declarations_document([item.declaration for item in imported]), source)
    except validation.DeclarationsError as exc:
        raise _yang_problems(exc, where, source, lines=False) from None
    failed = []
    for item in imported:
        try:
            plan(item.declaration, load_template, known_step_types, context)
        except PlanningError as exc:
            message = str(exc)
            for name in ("hostname", "pid"):  # built in, not a variable: say which field gives it
                message = message.replace(f"variable '{name}' is undefined (declare it under variable)",
                                          f"variable '{name}' is undefined (give the device a {name})")
            failed.append(Problem(item.where, message))
    if failed:
        raise ImportFailed(failed)


# --------------------------------------------------------------------------- output: a declarations file


def _comment(text: str) -> str:
    return "<!-- " + text.replace("--", "- -") + " -->\n"


#: Entries written on one line each, as an operator writes them: ``<variable><name>x</name><value>1</value></variable>``.
_ONE_LINE = frozenset(q(name) for name in ("variable", "command", "line", "param", "credentials"))


def _indented(element: etree._Element, level: int) -> etree._Element:
    etree.indent(element, space="  ", level=level)
    for entry in element.iter(*_ONE_LINE):
        entry.text = None
        for child in entry:
            child.tail = None
    return element


def declarations_document(declarations: Sequence[Declaration], comment: str = "") -> bytes:
    """A complete declarations file (``<config><services xmlns=...><pnp-device>...``), as ``serve`` reads it."""
    root = etree.Element("config")
    services = etree.SubElement(root, qname(CONTROLLER_NS, "services"), nsmap={None: CONTROLLER_NS})
    for declaration in declarations:
        services.append(declaration_to_xml(declaration))
    _indented(root, 0)
    head = "<?xml version='1.0' encoding='UTF-8'?>\n" + (_comment(comment) if comment else "")
    return head.encode() + etree.tostring(root, encoding="UTF-8") + b"\n"


def declarations_fragment(declarations: Sequence[Declaration]) -> str:
    """The ``<pnp-device>`` elements alone, indented to paste into a file's ``<services>``."""
    out = []
    for declaration in declarations:
        element = _indented(declaration_to_xml(declaration), 2)
        out.append("    " + etree.tostring(element, encoding="unicode").rstrip())
    return "\n".join(out) + "\n"


@dataclasses.dataclass(frozen=True)
class Merged:
    data: bytes
    added: tuple[str, ...]
    replaced: tuple[str, ...]
    kept: tuple[str, ...]


def _serialize(root: etree._Element) -> bytes:
    """The document with the comments around its root element each on a line of its own (lxml keeps no
    whitespace outside the root)."""
    before: list[etree._Element] = []
    after: list[etree._Element] = []
    sibling = root.getprevious()
    while sibling is not None:
        before.insert(0, sibling)
        sibling = sibling.getprevious()
    sibling = root.getnext()
    while sibling is not None:
        after.append(sibling)
        sibling = sibling.getnext()
    parts = [b"<?xml version='1.0' encoding='UTF-8'?>"]
    parts += [etree.tostring(node, encoding="UTF-8", with_tail=False) for node in before]
    parts.append(etree.tostring(root, encoding="UTF-8", with_tail=False))
    parts += [etree.tostring(node, encoding="UTF-8", with_tail=False) for node in after]
    return b"\n".join(parts)


def merge_into(existing: bytes, source: str, imported: Sequence[Imported], *, replace: bool = False) -> Merged:
    """``existing`` (a valid declarations file) with the imported declarations added; serials it has are replaced
    in place with ``replace``, else kept as they are.  Comments and the other declarations stay as written
    (comments inside a replaced declaration go with it).  The result is checked against the YANG whole."""
    try:
        validation.load(existing, source)
    except validation.DeclarationsError as exc:
        raise ImportFailed([Problem(Where(source, p.line), f"{p.message}{f' (at {p.path})' if p.path else ''}; "
                                    f"fix it first (pnp-service check --datastore {source})") for p in exc.problems]) from None
    root = etree.fromstring(existing, parser(large=True, keep_comments=True))
    services = root.find(qname(CONTROLLER_NS, "services"))
    if services is None:
        services = etree.SubElement(root, qname(CONTROLLER_NS, "services"), nsmap={None: CONTROLLER_NS})
        services.tail = "\n"
    present = {child_text(el, "serial").strip(): el for el in services.iterfind(q(SERVICE_NAME))}
    added, replaced, kept = [], [], []
    text = services.text or ""
    step = text if text and not text.strip() else "\n    "  # the indentation between declarations
    for item in imported:
        serial = item.declaration.serial
        element = _indented(declaration_to_xml(item.declaration), 2)
        old = present.get(serial)
        if old is not None:
            if not replace:
                kept.append(serial)
                continue
            element.tail = old.tail
            services.replace(old, element)
            present[serial] = element
            replaced.append(serial)
            continue
        if len(services):
            last = services[-1]
            element.tail, last.tail = last.tail, step
        else:
            services.text, element.tail = step, "\n  "
        services.append(element)
        added.append(serial)
    data = _serialize(root) + (b"\n" if existing.endswith(b"\n") else b"")
    where = {item.declaration.serial: item.where for item in imported}
    try:
        validation.load(data, source)
    except validation.DeclarationsError as exc:
        raise _yang_problems(exc, where, source, lines=True) from None
    return Merged(data, tuple(added), tuple(replaced), tuple(kept))


# --------------------------------------------------------------------------- output: clixon_cli


class Untypable(ValueError):
    """Text the controller's CLI cannot take (tabs, control or non-ASCII characters)."""


def cli_value(text: str) -> str:
    """``text`` as one clixon_cli (CLIgen) argument, as an operator pastes or pipes it.

    CLIgen reads a line in four passes, and each is answered here:
      1. the line editor takes ``\\`` as "the next character as is" and ``?`` as a help request;
      2. the line is trimmed: runs of blanks become one space, a word starting with ``#`` starts a comment;
      3. it is split into words on blanks and ``|``, a word opening with ``"`` running to the next ``"``
         (no escapes inside), ``\\`` protecting the next character elsewhere;
      4. a string value loses one more level of ``\\``.
    So a literal backslash is written ``\\\\\\\\``; a blank after a blank, and ``#`` after a blank, as
    ``\\\\`` and the character; ``?`` as ``\\?``.  A value without ``"`` is quoted; one with ``"`` is
    written unquoted, every blank, ``"`` and ``|`` escaped.  Tabs, control and non-ASCII characters
    cannot be typed: refused.
    """
    bad = sorted({ch for ch in text if not (" " <= ch <= "~")})
    if bad:
        shown = ", ".join(repr(ch) for ch in bad[:5])
        raise Untypable(f"has characters the controller's CLI cannot type ({shown})")
    if text and not any(ch in ' \t"\\|#?' for ch in text):
        return text
    quoted = '"' not in text
    if not quoted and text.endswith(" "):
        raise Untypable("has a quote and ends with a blank, which the controller's CLI trims")
    out = []
    previous = ""
    for ch in text:
        if ch == "\\":
            out.append("\\\\\\\\")
        elif ch == "?":
            out.append("\\?")
        elif ch == "#" and (previous == " " or (previous == "" and not quoted)):
            out.append("\\\\#")
        elif not quoted and ch in '|"':
            out.append("\\\\" + ch)
        elif ch == " " and (not quoted or previous == " "):
            out.append("\\\\ ")
        else:
            out.append(ch)
        previous = ch
    return f'"{"".join(out)}"' if quoted else "".join(out)


def _cli_lines(declaration: Declaration) -> Iterable[tuple[str, str, str]]:
    """(path, field name for messages, value or "") of each ``set`` line of one declaration."""
    yield from ((name, name, getattr(declaration, name)) for name in ("pid", "hostname") if getattr(declaration, name))
    lines = declaration.template_lines
    if declaration.template is not None:
        texts = declaration.template.split("\n")
        if texts and texts[-1] == "":
            texts.pop()
        lines = tuple((LINE_STEP * (i + 1), t) for i, t in enumerate(texts or [""]))
    for number, text in lines:
        yield (f"config line {number}" + (" text" if text else ""), f"template line {number}", text)
    if declaration.template_file:
        yield ("config template-file", "template-file", declaration.template_file)
    if declaration.config_url:
        yield ("config url", "config-url", declaration.config_url)
    if declaration.apply_to != "startup":
        yield ("config apply-to", "apply-to", declaration.apply_to)
    if not declaration.reload:
        yield ("config reload", "reload", "false")
    types = dict(declaration.variable_types)
    for name, value in declaration.variables:
        yield (f"variable {name}" + (" value" if value else ""), f"variable {name}", value)
        if name in types:
            yield (f"variable {name} type", f"variable {name}", types[name])
    for seq, command in declaration.commands:
        yield (f"command {seq} cli", f"command {seq}", command)
    for extra in declaration.steps:
        yield (f"step {extra.id} type", f"step {extra.id}", extra.type)
        if extra.position != "before-config":
            yield (f"step {extra.id} position", f"step {extra.id}", extra.position)
        for name, value in extra.params:
            yield (f"step {extra.id} param {name}" + (" value" if value else ""), f"step {extra.id}", value)
    if declaration.has_image or declaration.image_md5:
        yield ("image version", "image version", declaration.image_version)
        yield ("image url", "image url", declaration.image_url)
        yield ("image md5", "image md5", declaration.image_md5)
        if declaration.image_reload_wait != 60:
            yield ("image reload-wait", "image reload-wait", str(declaration.image_reload_wait))
    if declaration.username:
        yield ("credentials username", "username", declaration.username)
    if declaration.password:
        yield ("credentials password", "password", declaration.password)


#: Declarations per controller commit: the controller runs the service once per new instance and a commit must end
#: within its service-timeout (300 s by default); 1,000 new ones at 9,100 declared took about 50 s (README).
COMMIT_EVERY = 1000


def clixon_cli_script(imported: Sequence[Imported], *, replace: bool = False, comment: str = "",
                      commit_every: int = COMMIT_EVERY) -> str:
    """A script for ``clixon_cli``: ``configure``, one ``set services pnp-device SERIAL ...`` per leaf, a
    ``commit`` after every ``commit_every`` devices and at the end.

    With ``replace`` each device's old declaration is deleted first, so nothing of it survives; without,
    ``set`` merges into a declaration the controller has.  Templates are typed as numbered ``config line``s.
    """
    if commit_every < 1:
        raise ValueError("commit_every must be at least 1")
    problems = _Problems()
    out = [f"# {line}" for line in comment.splitlines()] + ["configure"]
    for number, item in enumerate(imported):
        if number and number % commit_every == 0:
            out.append("commit")
        declaration = item.declaration
        prefix = f"set services pnp-device {declaration.serial}"
        if replace:
            out.append(f"delete services pnp-device {declaration.serial}")
        out.append(prefix)
        for path, field, value in _cli_lines(declaration):
            try:
                out.append(f"{prefix} {path} {cli_value(value)}" if value else f"{prefix} {path}")
            except Untypable as exc:
                problems.add(item.where, f"{declaration.serial} {field}",
                             f"{exc}: write it with --output or --netconf instead")
    problems.raise_any()
    out += ["commit"]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- output: NETCONF


def netconf_config(declarations: Sequence[Declaration], *, replace: bool = False) -> str:
    """The ``<config>`` of an ``edit-config`` on the candidate: each ``pnp-device`` with operation ``create``
    (the controller refuses a serial it has), or ``replace`` (the old declaration goes whole)."""
    root = etree.Element(qname(NETCONF_NS, "config"), nsmap={None: NETCONF_NS, "nc": NETCONF_NS})
    services = etree.SubElement(root, qname(CONTROLLER_NS, "services"), nsmap={None: CONTROLLER_NS})
    for declaration in declarations:
        element = declaration_to_xml(declaration)
        element.set(qname(NETCONF_NS, "operation"), "replace" if replace else "create")
        services.append(element)
    _indented(root, 0)
    return etree.tostring(root, encoding="unicode") + "\n"


__all__ = ["Groups", "ImportFailed", "Imported", "Merged", "Problem", "Untypable", "Where", "claimed", "cli_value",
           "clixon_cli_script", "declarations_document", "declarations_fragment", "devices_from_csv",
           "devices_from_yaml", "load_groups", "merge_into", "netconf_config", "verify"]
