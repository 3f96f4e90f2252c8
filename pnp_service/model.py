"""The data model as Python values, and its XML form (the shape of yang/pnp-service).

Owns: the declaration, work, status and unclaimed records, and their
conversion from and to XML elements in the YANG's namespaces.  Both stores and
the service module read and write the tree through these functions only, so
the XML shape lives in one place.  Knows nothing of files, HTTP or Clixon.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Iterable, Mapping

from lxml import etree

PNP_NS = "urn:pnp-service:pnp"
CONTROLLER_NS = "http://clicon.org/controller"
CLIXON_LIB_NS = "http://clicon.org/lib"
SERVICE_NAME = "pnp-device"


def q(name: str, ns: str = PNP_NS) -> str:
    return f"{{{ns}}}{name}"


def creator_tag(serial: str) -> str:
    """The ``cl:creator`` value that ties work to its declaration."""
    return f"{SERVICE_NAME}[serial='{serial}']"


# --------------------------------------------------------------------------- time


def format_time(value: dt.datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class Declaration:
    """What the operator declared for one device (``/ctrl:services/pnp-device``)."""

    serial: str
    pid: str = ""
    hostname: str = ""
    template: str | None = None
    template_lines: tuple[tuple[int, str], ...] = ()
    template_file: str = ""
    config_url: str = ""
    apply_to: str = "startup"
    reload: bool = True
    variables: tuple[tuple[str, str], ...] = ()
    commands: tuple[tuple[int, str], ...] = ()
    image_version: str = ""
    image_url: str = ""
    image_md5: str = ""
    image_reload_wait: int = 60
    username: str = ""
    password: str = ""

    @property
    def has_image(self) -> bool:
        return bool(self.image_version and self.image_url)


@dataclasses.dataclass(frozen=True)
class Step:
    """One unit of work for a device, of a registered step type."""

    id: str
    type: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def param(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)


@dataclasses.dataclass(frozen=True)
class Work:
    """The ordered steps planned from one declaration, and their digest."""

    revision: str
    steps: tuple[Step, ...]

    def index(self, step_id: str | None) -> int | None:
        for position, step in enumerate(self.steps):
            if step.id == step_id:
                return position
        return None


@dataclasses.dataclass(frozen=True)
class Status:
    """A device's progress, as recorded by the listener."""

    state: str = "planned"
    revision: str = ""
    step: str = ""
    phase: str = ""
    attempts: int = 0
    correlator: str = ""
    retry_at: dt.datetime | None = None
    last_contact: dt.datetime | None = None
    address: str = ""
    udi: str = ""
    platform: str = ""
    version: str = ""
    hostname: str = ""
    error_code: str = ""
    error_message: str = ""
    error_step: str = ""
    error_time: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class Unclaimed:
    """A device that called in without a declaration."""

    serial: str
    udi: str = ""
    pid: str = ""
    hostname: str = ""
    address: str = ""
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class DeviceRecord:
    """Everything the listener knows about one serial."""

    serial: str
    declaration: Declaration | None = None
    work: Work | None = None
    status: Status | None = None
    unclaimed: Unclaimed | None = None


# --------------------------------------------------------------------------- XML helpers


def child_text(element: etree._Element | None, *path: str) -> str:
    for name in path:
        if element is None:
            return ""
        element = element.find(q(name))
    if element is None or element.text is None:
        return ""
    return element.text


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, q(name))
    if text is not None:
        child.text = text
    return child


def _add_leaves(parent: etree._Element, leaves: Iterable[tuple[str, str]]) -> None:
    for name, value in leaves:
        if value != "":
            _add(parent, name, value)


def _keyed(element: etree._Element, list_name: str, key: str, value: str) -> Iterable[tuple[str, str]]:
    for entry in element.iterfind(q(list_name)):
        yield child_text(entry, key), child_text(entry, value)


def _number(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


# --------------------------------------------------------------------------- declarations


def declaration_from_xml(element: etree._Element) -> Declaration:
    """Read one ``pnp-device`` element."""
    config = element.find(q("config"))
    image = element.find(q("image"))
    template_element = config.find(q("template")) if config is not None else None
    lines = tuple(
        sorted((_number(number), text) for number, text in _keyed(config, "line", "number", "text"))
        if config is not None
        else ()
    )
    commands = tuple(sorted((_number(seq), cli) for seq, cli in _keyed(element, "command", "seq", "cli")))
    return Declaration(
        serial=child_text(element, "serial").strip(),
        pid=child_text(element, "pid").strip(),
        hostname=child_text(element, "hostname").strip(),
        template=(template_element.text or "") if template_element is not None else None,
        template_lines=lines,
        template_file=child_text(config, "template-file").strip(),
        config_url=child_text(config, "url").strip(),
        apply_to=child_text(config, "apply-to").strip() or "startup",
        reload=child_text(config, "reload").strip().lower() not in ("false", "0"),
        variables=tuple(_keyed(element, "variable", "name", "value")),
        commands=commands,
        image_version=child_text(image, "version").strip(),
        image_url=child_text(image, "url").strip(),
        image_md5=child_text(image, "md5").strip().lower(),
        image_reload_wait=_number(child_text(image, "reload-wait"), 60) or 60,
        username=child_text(element, "credentials", "username"),
        password=child_text(element, "credentials", "password"),
    )


def declarations_from_services(services: etree._Element | None) -> dict[str, Declaration]:
    """Every declaration under a ``<services>`` element, by serial."""
    if services is None:
        return {}
    found = {}
    for element in services.iterfind(q(SERVICE_NAME)):
        declaration = declaration_from_xml(element)
        if declaration.serial:
            found[declaration.serial] = declaration
    return found


# --------------------------------------------------------------------------- work


def work_to_xml(serial: str, work: Work, *, creator: bool = True) -> etree._Element:
    """``<device><serial/><work .../></device>``, the work tagged with its creator."""
    device = etree.Element(q("device"), nsmap={None: PNP_NS, "cl": CLIXON_LIB_NS})
    _add(device, "serial", serial)
    work_element = _add(device, "work")
    if creator:
        work_element.set(q("creator", CLIXON_LIB_NS), creator_tag(serial))
    _add(work_element, "revision", work.revision)
    for step in work.steps:
        step_element = _add(work_element, "step")
        _add(step_element, "id", step.id)
        _add(step_element, "type", step.type)
        for name, value in step.params.items():
            param = _add(step_element, "param")
            _add(param, "name", name)
            _add(param, "value", value)
    return device


def work_from_xml(element: etree._Element | None) -> Work | None:
    """Read a ``work`` element; None when absent or without a revision."""
    if element is None:
        return None
    revision = child_text(element, "revision")
    if not revision:
        return None
    steps = tuple(
        Step(
            id=child_text(step, "id"),
            type=child_text(step, "type"),
            params=dict(_keyed(step, "param", "name", "value")),
        )
        for step in element.iterfind(q("step"))
    )
    return Work(revision, steps)


# --------------------------------------------------------------------------- status

_STATUS_LEAVES = (
    ("state", "state"),
    ("revision", "revision"),
    ("step", "step"),
    ("phase", "phase"),
    ("correlator", "correlator"),
    ("address", "address"),
    ("udi", "udi"),
    ("platform", "platform"),
    ("version", "version"),
    ("hostname", "hostname"),
)


def status_to_xml(status: Status) -> etree._Element:
    element = etree.Element(q("status"), nsmap={None: PNP_NS})
    _add_leaves(element, ((leaf, getattr(status, attr)) for leaf, attr in _STATUS_LEAVES))
    _add(element, "attempts", str(status.attempts))
    _add_leaves(
        element,
        (("retry-at", format_time(status.retry_at)), ("last-contact", format_time(status.last_contact))),
    )
    if status.error_code or status.error_message:
        error = _add(element, "last-error")
        _add_leaves(
            error,
            (
                ("code", status.error_code),
                ("message", status.error_message),
                ("step", status.error_step),
                ("time", format_time(status.error_time)),
            ),
        )
    return element


def status_from_xml(element: etree._Element | None) -> Status | None:
    if element is None:
        return None
    values = {attr: child_text(element, leaf) for leaf, attr in _STATUS_LEAVES}
    values["state"] = values["state"] or "planned"
    return Status(
        **values,
        attempts=_number(child_text(element, "attempts")),
        retry_at=parse_time(child_text(element, "retry-at")),
        last_contact=parse_time(child_text(element, "last-contact")),
        error_code=child_text(element, "last-error", "code"),
        error_message=child_text(element, "last-error", "message"),
        error_step=child_text(element, "last-error", "step"),
        error_time=parse_time(child_text(element, "last-error", "time")),
    )


# --------------------------------------------------------------------------- unclaimed


def unclaimed_to_xml(entry: Unclaimed) -> etree._Element:
    element = etree.Element(q("unclaimed"), nsmap={None: PNP_NS})
    _add(element, "serial", entry.serial)
    _add_leaves(
        element,
        (
            ("udi", entry.udi),
            ("pid", entry.pid),
            ("hostname", entry.hostname),
            ("address", entry.address),
            ("first-seen", format_time(entry.first_seen)),
            ("last-seen", format_time(entry.last_seen)),
        ),
    )
    return element


def unclaimed_from_xml(element: etree._Element) -> Unclaimed:
    return Unclaimed(
        serial=child_text(element, "serial"),
        udi=child_text(element, "udi"),
        pid=child_text(element, "pid"),
        hostname=child_text(element, "hostname"),
        address=child_text(element, "address"),
        first_seen=parse_time(child_text(element, "first-seen")),
        last_seen=parse_time(child_text(element, "last-seen")),
    )
