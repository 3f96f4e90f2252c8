"""What ``pnp-service status`` prints: a table, RFC 7951 JSON, or XML in the YANG's shape.

Owns the presentation of a store snapshot, nothing else.  Every value a device
reported is shown with its control characters escaped, so no device can break
a row or forge one.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from lxml import etree

from . import model
from .model import DeviceRecord, format_time
from .stores.base import Snapshot
from .xmlsafe import visible

FORMATS = ("table", "json", "xml")
#: Lists of the YANG, and leaves whose JSON value is a number (RFC 7951: uint32 is a number).
_LISTS = {"device", "unclaimed", "step", "param"}
_NUMBERS = {"attempts"}


def shown_state(record: DeviceRecord) -> str:
    """The state column: the status's state, or what the declaration alone says."""
    if record.declaration is None:
        return "removed" if record.status is not None else "unknown"
    if record.status is not None:
        return record.status.state
    if record.work is not None:
        return "planned"
    return "planning-error" if record.planning_error else "declared"


def _row(record: DeviceRecord) -> list[str]:
    status, declaration = record.status, record.declaration
    hostname = (declaration.hostname if declaration else "") or (status.hostname if status else "")
    pid = (declaration.pid if declaration else "") or (status.platform if status else "")
    if status is None:
        return [record.serial, shown_state(record), hostname, pid, "", "", "", "", record.planning_error]
    error = f"{status.error_code}: {status.error_message}" if status.error_code or status.error_message else ""
    step = status.step + (f" ({status.phase})" if status.phase else "")
    return [record.serial, shown_state(record), hostname, pid, step, str(status.attempts),
            format_time(status.last_contact), status.address, error]


def table(snapshot: Snapshot) -> str:
    rows = [["SERIAL", "STATE", "HOSTNAME", "PID", "STEP", "ATTEMPTS", "LAST-CONTACT", "ADDRESS", "LAST-ERROR"]]
    rows += [_row(record) for record in snapshot.devices]
    rows += [[u.serial, "unclaimed", u.hostname, u.pid, "", "", format_time(u.last_seen), u.address, ""]
             for u in snapshot.unclaimed]
    rows = [[visible(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(totals(snapshot))
    return "\n".join(line.rstrip() for line in lines)


def totals(snapshot: Snapshot) -> str:
    states = Counter(shown_state(record) for record in snapshot.devices)
    order = ["provisioned", "onboarding", "planned", "error", "planning-error", "declared", "removed"]
    parts = [f"{states[s]} {s}" for s in order if states[s]] + [f"{states[s]} {s}" for s in sorted(states) if s not in order]
    declared = sum(1 for record in snapshot.devices if record.declaration is not None)
    return f"{declared} declared: {', '.join(parts) or 'none'}; {len(snapshot.unclaimed)} unclaimed"


def xml_tree(snapshot: Snapshot) -> etree._Element:
    """``<pnp xmlns="urn:pnp-service:pnp">`` with each device's status (and work revision) and the unclaimed."""
    pnp = etree.Element(model.q("pnp"), nsmap={None: model.PNP_NS})
    for record in snapshot.devices:
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
        return rfc7951(snapshot)
    if form == "xml":
        return xml(snapshot)
    return table(snapshot)
