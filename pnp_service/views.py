"""What ``pnp-service status`` prints: a table, RFC 7951 JSON, or XML in the YANG's shape.

Owns the presentation of a store snapshot, nothing else.  Every value a device
reported is shown with its control characters escaped, so no device can break
a row or forge one.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections import Counter
from typing import Any

from lxml import etree

from . import model
from .model import DeviceRecord, State, format_time
from .stores.base import Snapshot
from .timeline import Entry, text as timeline_text
from .xmlsafe import visible

FORMATS = ("table", "json", "rfc7951", "xml")
#: Lists of the YANG, and leaves whose JSON value is a number (RFC 7951: uint32 is a number).
_LISTS = {"device", "unclaimed", "step", "param"}
_NUMBERS = {"attempts"}


class Shown(enum.StrEnum):
    """The state column: the YANG's device states, and what the operator is told where there is none, in the
    order the totals list them."""

    PROVISIONED = State.PROVISIONED.value
    ONBOARDING = State.ONBOARDING.value
    PENDING = "pending"  # its declaration changed since the device got it: served again from the first step
    PLANNED = State.PLANNED.value
    ERROR = State.ERROR.value
    PLANNING_ERROR = "planning-error"  # declared, its template does not render: served nothing until fixed
    DECLARED = "declared"  # declared, not planned yet
    REMOVED = "removed"  # a status whose declaration is gone
    UNKNOWN = "unknown"


def shown_state(record: DeviceRecord, declarations_known: bool = True) -> Shown:
    """The state column: the status's state, or what the declaration alone says.  A declaration that cannot be
    planned says so whatever the status: the device is served nothing until it is fixed."""
    if record.declaration is None:
        if not declarations_known:
            return Shown(record.status.state.value) if record.status is not None else Shown.UNKNOWN
        return Shown.REMOVED if record.status is not None else Shown.UNKNOWN
    if record.work is None and record.planning_error:
        return Shown.PLANNING_ERROR
    if record.status is not None:
        if record.work is not None and record.status.revision and record.status.revision != record.work.revision:
            return Shown.PENDING  # a provisioned (or failed) device reads so only for what it has got
        return Shown(record.status.state.value)
    return Shown.PLANNED if record.work is not None else Shown.DECLARED


COLUMNS = ("serial", "state", "hostname", "pid", "step", "attempts", "handoff", "last-contact", "address", "last-error")


def row(record: DeviceRecord, declarations_known: bool = True) -> dict[str, str]:
    """One device as the operator sees it: the declared hostname and PID (else what the device reported)."""
    status, declaration = record.status, record.declaration
    hostname = (declaration.hostname if declaration else "") or (status.facts.hostname if status else "")
    pid = (declaration.pid if declaration else "") or (status.facts.platform if status else "")
    shown = dict.fromkeys(COLUMNS, "")
    shown.update(serial=record.serial, state=shown_state(record, declarations_known), hostname=hostname, pid=pid)
    if record.work is None and record.planning_error:
        shown["last-error"] = record.planning_error
    if status is not None:
        error = f"{status.error.code}: {status.error.message}" if status.error.code or status.error.message else ""
        shown.update({"step": status.step + (f" ({status.phase})" if status.phase else ""),
                      "attempts": str(status.attempts), "last-contact": format_time(status.last_contact),
                      "address": status.address, "last-error": shown["last-error"] or error,
                      "handoff": handoff_text(status)})
    return shown


def handoff_text(status: model.Status) -> str:
    """``managed``, ``pending``, ``failed: <the controller's message>``; "" for a device not handed off."""
    handoff = status.handoff
    if not handoff.state:
        return ""
    return str(handoff.state) + (f": {handoff.message}" if handoff.message and handoff.state == model.Handoff.FAILED else "")


def _unclaimed_row(entry: model.Unclaimed) -> dict[str, str]:
    shown = dict.fromkeys(COLUMNS, "")
    shown.update(serial=entry.serial, state="unclaimed", hostname=entry.hostname, pid=entry.pid,
                 **{"last-contact": format_time(entry.last_seen)}, address=entry.address)
    if entry.note:  # refused by location: why, and whom to reset
        shown["last-error"] = entry.note
    return shown


def table(snapshot: Snapshot) -> str:
    rows = [[column.upper() for column in COLUMNS]]
    rows += [list(row(record, snapshot.declarations_known).values()) for record in snapshot.devices]
    rows += [list(_unclaimed_row(u).values()) for u in snapshot.unclaimed]
    rows = [[visible(cell) for cell in cells] for cells in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(totals(snapshot))
    return "\n".join(line.rstrip() for line in lines)


def totals(snapshot: Snapshot) -> str:
    """``6 declared: 2 provisioned, ...; 1 removed; 3 unclaimed``: the parts of each count add up to it."""
    if not snapshot.declarations_known:
        return (f"declarations unreadable (see the warning): {len(snapshot.devices)} with a status; "
                f"{len(snapshot.unclaimed)} unclaimed")
    states = Counter(shown_state(record) for record in snapshot.devices if record.declaration is not None)
    parts = [f"{states[shown]} {shown}" for shown in Shown if states[shown]]
    removed = sum(1 for record in snapshot.devices if record.declaration is None)
    return (f"{sum(states.values())} declared: {', '.join(parts) or 'none'}; "
            + (f"{removed} removed; " if removed else "") + f"{len(snapshot.unclaimed)} unclaimed")


def device(snapshot: Snapshot, serial: str, entries: list[Entry], form: str = "table") -> str | None:
    """One device (declared, with a status, or unclaimed) and its timeline: ``status SERIAL``; None: unknown."""
    record = next((r for r in snapshot.devices if r.serial == serial), None)
    stranger = next((u for u in snapshot.unclaimed if u.serial == serial), None)
    if record is None and stranger is None and not entries:
        return None
    shown = row(record, snapshot.declarations_known) if record is not None else (
        _unclaimed_row(stranger) if stranger is not None else dict.fromkeys(COLUMNS, "") | {"serial": serial})
    status = record.status if record is not None else None
    if status is not None and status.handoff.message and not shown["handoff"].endswith(status.handoff.message):
        shown["handoff"] += f": {status.handoff.message}"  # the whole story on the device's own page
    if form == "json":
        return json.dumps({"device": shown, "timeline": [entry.as_dict() for entry in entries]}, indent=2,
                          ensure_ascii=False)
    width = max(len(name) for name in shown)
    lines = [f"{name.ljust(width)}  {visible(value)}" for name, value in shown.items() if value]
    return "\n".join(lines + ["", *map(visible, timeline_text(serial, entries).split("\n"))])


def rows_json(snapshot: Snapshot) -> str:
    """The table as JSON: ``{"devices": [{serial, state, hostname, ...}], "unclaimed": [...], "totals": ...}``."""
    return json.dumps({
        "devices": [row(record, snapshot.declarations_known) for record in snapshot.devices],
        "unclaimed": [_unclaimed_row(entry) for entry in snapshot.unclaimed],
        "totals": totals(snapshot),
        "problems": list(snapshot.problems),
    }, indent=2, ensure_ascii=False)


def xml_tree(snapshot: Snapshot) -> etree._Element:
    """``<pnp xmlns="urn:pnp-service:pnp">`` with each device's status (and work revision) and the unclaimed.
    A planned device that never called in has the state ``planned`` (what the controller's tree reads too)."""
    pnp = etree.Element(model.q("pnp"), nsmap={None: model.PNP_NS})
    for record in snapshot.devices:
        if record.status is None and record.work is not None:
            record = dataclasses.replace(record, status=model.Status(state=State.PLANNED, revision=record.work.revision))
        device = model.device_to_xml(record)
        if record.work is not None:
            work = etree.Element(model.q("work"))
            etree.SubElement(work, model.q("revision")).text = record.work.revision
            device.insert(1, work)
        if len(device) > 1:
            pnp.append(device)
    for entry in snapshot.unclaimed:
        pnp.append(model.unclaimed_to_xml(entry))
    return pnp


def xml(snapshot: Snapshot) -> str:
    tree = xml_tree(snapshot)
    etree.indent(tree, space="  ")
    return etree.tostring(tree, encoding="unicode")


def _json_value(element: etree._Element) -> Any:
    children = [child for child in element if isinstance(child.tag, str)]
    if not children:
        text = element.text or ""
        name = etree.QName(element).localname
        return int(text) if name in _NUMBERS and text.isdigit() else text
    out: dict[str, Any] = {}
    for child in children:
        name = etree.QName(child).localname
        value = _json_value(child)
        if name in _LISTS:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    return out


def rfc7951(snapshot: Snapshot) -> str:
    """RFC 7951 JSON of the same tree: ``{"pnp-service:pnp": {...}}``."""
    return json.dumps({f"{model.MODULE_NAME}:pnp": _json_value(xml_tree(snapshot))}, indent=2, ensure_ascii=False)


def render(snapshot: Snapshot, form: str) -> str:
    if form == "json":
        return rows_json(snapshot)
    if form == "rfc7951":
        return rfc7951(snapshot)
    if form == "xml":
        return xml(snapshot)
    return table(snapshot)
