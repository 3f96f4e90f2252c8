"""Where declarations come from: a YAML or CSV device list, or unclaimed devices being claimed.

Owns reading each source into levels (:mod:`.lists`), YAML types becoming typed variables and a CSV header
carrying one (``var.vlan:number``).  Pure: text in, :class:`~.lists.Imported` values out.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from typing import Collection, Mapping, Sequence

import yaml

from ..model import Unclaimed
from ..planner import PlanningError, typed_value
from .lists import CSV_FIELDS, GROUP_SEPARATORS, Groups, ImportFailed, Imported, Layer, Problem, VARIABLE_TYPES, Value, Where, _Entry, _Problems, _build, _layer, _location, _serial, _suggest, _text, _variable_name


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
    if not any(c is not None and c.name in ("serial", "location") and c.kind == "field" for c in columns):
        problems.add(where, "serial", "the header has no serial column (nor a location column)")
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
        located = fields.pop("location", None)
        location: tuple[str, ...] = ()
        if located is not None and "serial" in fields:
            problems.add(where, "location", "declare a switch by serial or by location, not both")
            continue
        if located is not None:
            location, serial = _location(located, where, problems) or (), None
            serial = "" if location else None
        else:
            serial = _serial(fields.pop("serial", None), where, problems)
        group = fields.pop("group", None)
        names = tuple(n.strip() for n in GROUP_SEPARATORS.split(group.text) if n.strip()) if group else ()
        entries.append(_Entry(where, serial, names, _layer(fields, where, problems, what="a device",
                                                           variables=variables), location))
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


