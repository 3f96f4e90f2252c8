"""The data model as Python values, and its XML and JSON forms (the shape of yang/pnp-service).

Owns the declaration, work, status and unclaimed records, their conversion from
and to XML elements in the YANG's namespaces (the only writer of each shape: the
stores and the service module go through these functions), and their JSON form
for the embedded database and the Clixon journal.  Knows nothing of files, HTTP
or Clixon.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import enum
import json
from typing import Any, Iterable, Iterator, Mapping, TypeVar

from lxml import etree

from .neighbours import Location
from .protocol import SERIAL_PATTERN
from .xmlsafe import qname

PNP_NS = "urn:pnp-service:pnp"
CONTROLLER_NS = "http://clicon.org/controller"
CLIXON_LIB_NS = "http://clicon.org/lib"
NETCONF_NS = "urn:ietf:params:xml:ns:netconf:base:1.0"
SERVICE_NAME = "pnp-device"
#: The YANG module name, as RFC 7951 JSON names it.
MODULE_NAME = "pnp-service"


def q(name: str) -> str:
    """A name in the pnp-service namespace, in Clark notation."""
    return qname(PNP_NS, name)


def is_serial(text: str) -> bool:
    """True when ``text`` is a valid serial number (the YANG's ``serial-number``)."""
    return bool(SERIAL_PATTERN.fullmatch(text or ""))


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


@dataclasses.dataclass(frozen=True, slots=True)
class ExtraStep:
    """A step the operator scheduled beside the built-in ones (``pnp-device/step``)."""

    id: str
    type: str
    position: str = "before-config"
    params: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class HandOff:
    """Where a provisioned device goes under ``/ctrl:devices`` (``pnp-device/controller``)."""

    name: str = ""
    address: str = ""
    port: int = 830
    user: str = "netconf"
    profile: str = ""
    check_host_key: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
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
    #: Variables whose value is not a plain string: name -> number | boolean | list.
    variable_types: tuple[tuple[str, str], ...] = ()
    commands: tuple[tuple[int, str], ...] = ()
    image_version: str = ""
    image_url: str = ""
    image_md5: str = ""
    image_reload_wait: int = 60
    #: Size of the image file in bytes, for the free-space check (0: unknown, or the listener's own file).
    image_size: int = 0
    username: str = ""
    password: str = ""
    steps: tuple[ExtraStep, ...] = ()
    #: The hand-off to the controller, when the ``controller`` container is declared.
    handoff: HandOff | None = None
    #: ``sudi``: the device must prove its identity (SUDI certificate and key) before it is served anything.
    authentication: str = "none"
    #: Serials a valid SUDI certificate may name (empty: the declared serial and the stack's members).
    sudi_serials: tuple[str, ...] = ()
    #: A stack: declared (``stack`` container present), its other members' serials, how many switches it has.
    stack: bool = False
    stack_members: tuple[str, ...] = ()
    stack_size: int = 0
    #: The location (neighbor, port, as declared) whose declaration this one was made from: its binding.
    located: tuple[str, ...] = ()

    @property
    def has_image(self) -> bool:
        return bool(self.image_version and self.image_url)

    @property
    def sudi_allowed(self) -> tuple[str, ...]:
        """The serials a SUDI certificate may name for this declaration."""
        return self.sudi_serials or (self.serial, *self.stack_members)


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """One unit of work for a device, of a registered step type."""

    id: str
    type: str
    params: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def param(self, name: str, default: str = "") -> str:
        return self.params.get(name, default)


@dataclasses.dataclass(frozen=True, slots=True)
class Work:
    """The ordered steps planned from one declaration, and their digest."""

    revision: str
    steps: tuple[Step, ...]
    #: The digest of the same plan without the hand-off (the ``controller`` container): equal for two revisions
    #: that differ only in where the device is handed, so such a change redoes the hand-off, not the provisioning.
    steps_revision: str = ""

    def index(self, step_id: str | None) -> int | None:
        for position, step in enumerate(self.steps):
            if step.id == step_id:
                return position
        return None


class State(enum.StrEnum):
    """``/pnp/device/status/state``: the YANG's ``device-state`` enumeration."""

    PLANNED = "planned"
    ONBOARDING = "onboarding"
    PROVISIONED = "provisioned"
    ERROR = "error"


class Handoff(enum.StrEnum):
    """``/pnp/device/status/handoff/state``: where a provisioned device is in being handed to its controller (or
    the hooks); NONE: nobody to hand it to."""

    NONE = ""
    PENDING = "pending"
    MANAGED = "managed"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What the device reported about itself (device-info, the SSH host key); changed only by what it reports."""

    udi: str = ""
    platform: str = ""
    version: str = ""
    hostname: str = ""
    #: From device-info: the image file it boots, install or bundle mode, where images go and its free bytes.
    image_file: str = ""
    mode: str = ""
    flash: str = ""
    flash_free: int | None = None
    #: The stack's switches as device-info listed them: (slot, serial, pid, role), role active or member.
    members: tuple[tuple[int, str, str, str], ...] = ()
    host_key: str = ""

    def reported(self, facts: Mapping[str, Any]) -> DeviceFacts:
        """These facts with what the device just reported (0 is a fact, a full flash; what it left out stays)."""
        known = {name: value for name, value in facts.items()
                 if name in _FACT_NAMES and value is not None and value != ""}
        return dataclasses.replace(self, **known) if known else self


_FACT_NAMES = frozenset(field.name for field in dataclasses.fields(DeviceFacts))


@dataclasses.dataclass(frozen=True, slots=True)
class SudiState:
    """SUDI: open challenges (correlator, address, challenge, expires), where and when the device proved itself,
    and addresses that failed a proof and are held off (address, until, failures).  Changed by a challenge, a
    proof and a refused proof only."""

    challenges: tuple[tuple[str, str, str, str], ...] = ()
    proven_address: str = ""
    proven_at: dt.datetime | None = None
    throttled: tuple[tuple[str, str, int], ...] = ()

    def asked(self, challenges: tuple[tuple[str, str, str, str], ...]) -> SudiState:
        return dataclasses.replace(self, challenges=challenges)

    def proven(self, remaining: tuple[tuple[str, str, str, str], ...], address: str, now: dt.datetime) -> SudiState:
        """A valid proof from ``address``: its challenge used, its hold-off lifted."""
        return SudiState(remaining, address, now, tuple(t for t in self.throttled if t[0] != address))

    def refused(self, remaining: tuple[tuple[str, str, str, str], ...], address: str, until: str,
                failures: int, keep: int = 16) -> SudiState:
        """A failed proof from ``address``: held off until ``until`` (the last ``keep`` addresses are remembered)."""
        held = tuple(t for t in self.throttled if t[0] != address)[-(keep - 1):] + ((address, until, failures),)
        return dataclasses.replace(self, challenges=remaining, throttled=held)


@dataclasses.dataclass(frozen=True, slots=True)
class HandoffProgress:
    """The hand-off of a provisioned device to its controller (or the hooks), once per device and revision."""

    state: Handoff = Handoff.NONE
    revision: str = ""
    device: str = ""
    message: str = ""
    attempts: int = 0
    next: dt.datetime | None = None
    time: dt.datetime | None = None

    def __post_init__(self) -> None:
        if type(self.state) is not Handoff:  # read back as text: held as the enum, a misspelt value fails here
            object.__setattr__(self, "state", Handoff(self.state))

    @classmethod
    def pending(cls, revision: str, now: dt.datetime) -> HandoffProgress:
        """Provisioned: to be handed on now."""
        return cls(Handoff.PENDING, revision, next=now, time=now)

    def claimed(self, until: dt.datetime) -> HandoffProgress:
        """A worker works on it; nobody else before ``until``."""
        return dataclasses.replace(self, next=until)

    def recorded(self, state: Handoff, message: str, device: str, now: dt.datetime,
                 retry_at: dt.datetime | None) -> HandoffProgress:
        """One attempt's outcome; ``retry_at`` None: no further attempt."""
        return dataclasses.replace(self, state=state, message=message, device=device or self.device,
                                   attempts=self.attempts + 1, time=now, next=retry_at)


@dataclasses.dataclass(frozen=True, slots=True)
class LastError:
    """The last thing that went wrong, where the operator sees it; empty when nothing has."""

    code: str = ""
    message: str = ""
    step: str = ""
    time: dt.datetime | None = None

    def __bool__(self) -> bool:
        return bool(self.code or self.message)


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """A device's progress, as recorded by the listener: where it is in its work, and the records of what it
    reported (:class:`DeviceFacts`), proved (:class:`SudiState`), how its hand-off goes (:class:`HandoffProgress`)
    and the last error (:class:`LastError`).  Stored and shown flat (:meth:`flat`), as the YANG has it."""

    state: State = State.PLANNED
    revision: str = ""
    #: The work's ``steps_revision`` when this status began: what tells a hand-off-only change from a new plan.
    steps_revision: str = ""
    step: str = ""
    phase: str = ""
    attempts: int = 0
    correlator: str = ""
    retry_at: dt.datetime | None = None
    last_contact: dt.datetime | None = None
    address: str = ""
    started: dt.datetime | None = None
    #: When the current phase began, its deadline, and the last time the device said it had reloaded.
    phase_since: dt.datetime | None = None
    deadline: dt.datetime | None = None
    reloaded: dt.datetime | None = None
    #: The device's last poll came over HTTPS.
    secure: bool = False
    facts: DeviceFacts = DeviceFacts()
    sudi: SudiState = SudiState()
    handoff: HandoffProgress = HandoffProgress()
    error: LastError = LastError()

    def __post_init__(self) -> None:
        # Read back from JSON, XML or a journal as plain text: held as the enum, a misspelt value fails here.
        if type(self.state) is not State:
            object.__setattr__(self, "state", State(self.state))

    def failed(self, code: str, message: str, step: str, now: dt.datetime) -> Status:
        """The status with this as its last error (the state is the caller's to change)."""
        return dataclasses.replace(self, error=LastError(code, message, step, now))

    def without_error(self) -> Status:
        return dataclasses.replace(self, error=LastError()) if self.error else self

    def flat(self) -> dict[str, Any]:
        """Every field under its stored name (``error_code``, ``handoff_next``, ``version``...)."""
        values = {name: getattr(self, name) for name in _PROGRESS}
        for part, (prefix, names) in _PARTS.items():
            record = getattr(self, part)
            for name in names:
                values[_flat_name(prefix, name)] = getattr(record, name)
        return values

    @classmethod
    def from_flat(cls, **values: Any) -> Status:
        """The inverse of :meth:`flat`; names it does not know are an error (TypeError), as for a constructor."""
        parts: dict[str, dict[str, Any]] = {part: {} for part in _PARTS}
        progress: dict[str, Any] = {}
        for flat_name, value in values.items():
            found = _FLAT.get(flat_name)
            if found is None:
                raise TypeError(f"Status has no field {flat_name!r}")
            part, name = found
            (parts[part] if part else progress)[name] = value
        return cls(**progress, **{part: _PART_TYPES[part](**fields) for part, fields in parts.items()})


_PART_TYPES: dict[str, type] = {"facts": DeviceFacts, "sudi": SudiState, "handoff": HandoffProgress, "error": LastError}
_PARTS: dict[str, tuple[str, tuple[str, ...]]] = {
    part: (prefix, tuple(field.name for field in dataclasses.fields(kind)))
    for part, prefix, kind in (("facts", "", DeviceFacts), ("sudi", "", SudiState), ("handoff", "handoff_", HandoffProgress),
                               ("error", "error_", LastError))
}
_PROGRESS = tuple(field.name for field in dataclasses.fields(Status) if field.name not in _PARTS)


def _flat_name(prefix: str, name: str) -> str:
    return "handoff" if prefix == "handoff_" and name == "state" else prefix + name


#: Stored name -> (part, field); part "" for the progress fields of Status itself.
_FLAT: dict[str, tuple[str, str]] = {name: ("", name) for name in _PROGRESS} | {
    _flat_name(prefix, name): (part, name) for part, (prefix, names) in _PARTS.items() for name in names
}


@dataclasses.dataclass(frozen=True, slots=True)
class Unclaimed:
    """A device that called in without a declaration."""

    serial: str
    udi: str = ""
    pid: str = ""
    hostname: str = ""
    address: str = ""
    first_seen: dt.datetime | None = None
    last_seen: dt.datetime | None = None
    #: The request outstanding to learn what it is (a member of a declared stack, a switch at a declared location),
    #: when this round of questions began, and the last question of the round (provisioner.PROBES; "" once the
    #: round ended).
    correlator: str = ""
    probed: dt.datetime | None = None
    probe: str = ""
    #: Why it is not provisioned by where it is plugged in (the location is another switch's, or two match).
    note: str = ""
    #: The declared location (``str(Location)``) it was found at, when that declaration asks for SUDI: the
    #: challenge it must answer before it is bound (single use, for one address, expiring).
    candidate: str = ""
    challenge: str = ""
    challenge_address: str = ""
    challenge_expires: dt.datetime | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class DeviceRecord:
    """Everything the listener knows about one serial."""

    serial: str
    declaration: Declaration | None = None
    work: Work | None = None
    status: Status | None = None
    unclaimed: Unclaimed | None = None
    #: Why a declared device has no work (embedded mode: its template did not render).
    planning_error: str = ""
    #: The serial that called, when it is a member of the declared stack ``serial`` (else equal to it).
    caller: str = ""
    #: Serials of declared stacks and of their declared members -> the stack's declared serial, for matching a
    #: switch that calls in unknown (shared by every record of a store: never copied).
    stacks: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Declared locations (an upstream device and port, in normal form) -> the serial bound to each ("": none yet),
    #: for matching a switch that calls in unknown by where it is plugged in (shared, never copied).
    locations: Mapping[Location, str] = dataclasses.field(default_factory=dict)
    #: The declarations of those locations (shared, never copied): what a switch found at one must prove first.
    location_declarations: Mapping[Location, LocationDeclaration] = dataclasses.field(default_factory=dict)


# --------------------------------------------------------------------------- JSON forms

R = TypeVar("R", Status, Unclaimed)

def _stored_types(cls: type) -> dict[str, str]:
    """A record's stored field names and their types (a status's flat names: :meth:`Status.flat`)."""
    if cls is not Status:
        return {f.name: str(f.type) for f in dataclasses.fields(cls)}
    types = {f.name: str(f.type) for f in dataclasses.fields(Status) if f.name in _PROGRESS}
    for part, (prefix, _) in _PARTS.items():
        types |= {_flat_name(prefix, f.name): str(f.type) for f in dataclasses.fields(_PART_TYPES[part])}
    return types


_STORED = {cls: _stored_types(cls) for cls in (Status, Unclaimed)}
_TIME_FIELDS = {cls: frozenset(name for name, kind in _STORED[cls].items() if "datetime" in kind)
                for cls in (Status, Unclaimed)}
_FIELD_NAMES = {cls: tuple(_STORED[cls]) for cls in (Status, Unclaimed)}
#: Fields holding tuples of tuples, which JSON turns into lists.
_NESTED = {cls: frozenset(name for name, kind in _STORED[cls].items() if kind.startswith("tuple[tuple"))
           for cls in (Status, Unclaimed)}


def record_to_dict(record: Status | Unclaimed) -> dict[str, Any]:
    """A status or unclaimed entry as plain JSON values (times as RFC 3339 strings), empty fields left out."""
    times = _TIME_FIELDS[type(record)]
    out: dict[str, Any] = {}
    values = record.flat() if isinstance(record, Status) else {name: getattr(record, name) for name in _FIELD_NAMES[Unclaimed]}
    for name, value in values.items():
        if name in times:
            value = format_time(value)
        if value not in ("", None) and not (name in ("attempts", "handoff_attempts") and value == 0):
            out[name] = value
    return out


def record_from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
    """The inverse of :func:`record_to_dict`; unknown keys (from a newer version) are ignored."""
    names = _FIELD_NAMES[cls]
    times = _TIME_FIELDS[cls]
    values: dict[str, Any] = {k: (parse_time(v) if k in times else v) for k, v in data.items() if k in names}
    for name in _NESTED[cls] & values.keys():  # JSON lists back into the record's tuples
        values[name] = tuple(tuple(item) for item in values[name])
    return Status.from_flat(**values) if cls is Status else cls(**values)  # type: ignore[return-value]


def work_to_json(work: Work) -> str:
    return json.dumps(
        {"revision": work.revision, "steps": [[s.id, s.type, dict(s.params)] for s in work.steps]},
        separators=(",", ":"),
        ensure_ascii=False,
    )


def work_from_json(text: str) -> Work:
    data = json.loads(text)
    return Work(data["revision"], tuple(Step(i, t, p) for i, t, p in data["steps"]))


# --------------------------------------------------------------------------- XML helpers

#: Texts already read in this context (:func:`sharing_texts`), each kept once.
_shared_texts: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("shared_texts", default=None)


@contextlib.contextmanager
def sharing_texts() -> Iterator[None]:
    """Read equal texts as one string while the block (or the function it decorates) runs.

    A store reading 10,000 devices at once meets the same platform, step names, template and variable names on each:
    lxml gives a new string for every text read, and those copies were most of the memory a copy of running held.
    The pool lives as long as the block (the records keep what they use), so nothing a device sent outlives them."""
    token = _shared_texts.set({})
    try:
        yield
    finally:
        _shared_texts.reset(token)


def element_text(element: etree._Element) -> str:
    """``element``'s text ("" for none), shared with equal texts inside :func:`sharing_texts`."""
    text = element.text
    if text is None:
        return ""
    shared = _shared_texts.get()
    return text if shared is None else shared.setdefault(text, text)


def child_text(element: etree._Element | None, *path: str) -> str:
    for name in path:
        if element is None:
            return ""
        element = element.find(q(name))
    return "" if element is None else element_text(element)


def _add(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    child = etree.SubElement(parent, q(name))
    if text is not None:
        child.text = text
    return child


def _add_leaves(parent: etree._Element, leaves: Iterable[tuple[str, str]]) -> None:
    for name, value in leaves:
        if value != "":
            _add(parent, name, value)


def _keyed(element: etree._Element | None, list_name: str, key: str, value: str) -> Iterable[tuple[str, str]]:
    if element is None:
        return
    for entry in element.iterfind(q(list_name)):
        yield child_text(entry, key), child_text(entry, value)


def _number(text: str, default: int = 0) -> int:
    try:
        return int(text)
    except ValueError:
        return default


# --------------------------------------------------------------------------- declarations


@dataclasses.dataclass(frozen=True, slots=True)
class LocationDeclaration:
    """A switch declared by where it is plugged in (``pnp-location``): the upstream device and port as declared, and
    what a serial declaration says (serial "")."""

    neighbor: str
    port: str
    declaration: Declaration

    @property
    def location(self) -> Location:
        return Location(self.neighbor, self.port)

    def for_serial(self, serial: str) -> Declaration:
        """The declaration of the switch bound to this location."""
        return dataclasses.replace(self.declaration, serial=serial, located=(self.neighbor, self.port))


def location_from_xml(element: etree._Element) -> LocationDeclaration:
    """Read one ``pnp-location`` element (already valid against the YANG): the grouping it shares with ``pnp-device``
    is read by :func:`declaration_from_xml`."""
    return LocationDeclaration(child_text(element, "neighbor").strip(), child_text(element, "port").strip(),
                               declaration_from_xml(element))


def declaration_from_xml(element: etree._Element) -> Declaration:
    """Read one ``pnp-device`` element, or the declaration of a ``pnp-location`` (already valid against the YANG)."""
    config = element.find(q("config"))
    image = element.find(q("image"))
    stack = element.find(q("stack"))
    template_element = config.find(q("template")) if config is not None else None
    lines = tuple(sorted((_number(number), text) for number, text in _keyed(config, "line", "number", "text")))
    commands = tuple(sorted((_number(seq), cli) for seq, cli in _keyed(element, "command", "seq", "cli")))
    steps = tuple(
        ExtraStep(
            id=child_text(step, "id").strip(),
            type=child_text(step, "type").strip(),
            position=child_text(step, "position").strip() or "before-config",
            params=tuple(_keyed(step, "param", "name", "value")),
        )
        for step in element.iterfind(q("step"))
    )
    return Declaration(
        serial=child_text(element, "serial").strip(),
        pid=child_text(element, "pid").strip(),
        hostname=child_text(element, "hostname").strip(),
        template=element_text(template_element) if template_element is not None else None,
        template_lines=lines,
        template_file=child_text(config, "template-file").strip(),
        config_url=child_text(config, "url").strip(),
        apply_to=child_text(config, "apply-to").strip() or "startup",
        reload=child_text(config, "reload").strip().lower() not in ("false", "0"),
        variables=tuple(_keyed(element, "variable", "name", "value")),
        variable_types=tuple((n, t) for n, t in _keyed(element, "variable", "name", "type") if t and t != "string"),
        commands=commands,
        image_version=child_text(image, "version").strip(),
        image_url=child_text(image, "url").strip(),
        image_md5=child_text(image, "md5").strip().lower(),
        image_reload_wait=_number(child_text(image, "reload-wait"), 60) or 60,
        image_size=_number(child_text(image, "size")),
        username=child_text(element, "credentials", "username"),
        password=child_text(element, "credentials", "password"),
        steps=steps,
        authentication=child_text(element, "authentication").strip() or "none",
        sudi_serials=tuple(e.text.strip() for e in element.iterfind(q("sudi-serial")) if e.text),
        handoff=_handoff_from_xml(element.find(q("controller"))),
        stack=stack is not None,
        stack_members=tuple(m.text.strip() for m in stack.iterfind(q("member")) if m.text) if stack is not None else (),
        stack_size=_number(child_text(stack, "members")) if stack is not None else 0,
        located=_located(element.find(q("located"))),
    )


def _located(element: etree._Element | None) -> tuple[str, ...]:
    if element is None:
        return ()
    return child_text(element, "neighbor").strip(), child_text(element, "port").strip()


def _handoff_from_xml(element: etree._Element | None) -> HandOff | None:
    if element is None:
        return None
    return HandOff(
        name=child_text(element, "name").strip(),
        address=child_text(element, "address").strip(),
        port=_number(child_text(element, "port"), 830) or 830,
        user=child_text(element, "user").strip() or "netconf",
        profile=child_text(element, "device-profile").strip(),
        check_host_key=child_text(element, "check-host-key").strip().lower() not in ("false", "0"),
    )


def declaration_to_xml(declaration: Declaration) -> etree._Element:
    """One ``pnp-device`` element, the inverse of :func:`declaration_from_xml`, leaves in the YANG's order.

    Defaults (``apply-to startup``, ``reload true``, ``reload-wait 60``, variable type ``string``) are left out,
    as an operator would write them.
    """
    by_location = not declaration.serial and declaration.located  # a pnp-location: its keys instead of a serial
    element = etree.Element(q("pnp-location" if by_location else SERVICE_NAME), nsmap={None: PNP_NS})
    if by_location:
        _add_leaves(element, (("neighbor", declaration.located[0]), ("port", declaration.located[1])))
    _add_leaves(element, (("serial", declaration.serial), ("pid", declaration.pid), ("hostname", declaration.hostname)))
    config_leaves = [("template-file", declaration.template_file), ("url", declaration.config_url)]
    defaults_differ = declaration.apply_to != "startup" or not declaration.reload
    if declaration.template is not None or declaration.template_lines or any(v for _, v in config_leaves) or defaults_differ:
        config = _add(element, "config")
        if declaration.template is not None:
            _add(config, "template", declaration.template)
        for number, text in declaration.template_lines:
            line = _add(config, "line")
            _add(line, "number", str(number))
            _add_leaves(line, (("text", text),))
        _add_leaves(config, config_leaves)
        if declaration.apply_to != "startup":
            _add(config, "apply-to", declaration.apply_to)
        if not declaration.reload:
            _add(config, "reload", "false")
    types = dict(declaration.variable_types)
    for name, value in declaration.variables:
        variable = _add(element, "variable")
        _add(variable, "name", name)
        _add_leaves(variable, (("value", value), ("type", types.get(name, ""))))
    for seq, cli in declaration.commands:
        command = _add(element, "command")
        _add(command, "seq", str(seq))
        _add(command, "cli", cli)
    for extra in declaration.steps:
        step = _add(element, "step")
        _add(step, "id", extra.id)
        _add(step, "type", extra.type)
        if extra.position != "before-config":
            _add(step, "position", extra.position)
        for name, value in extra.params:
            param = _add(step, "param")
            _add(param, "name", name)
            _add_leaves(param, (("value", value),))
    if declaration.handoff is not None:
        _add_handoff(element, declaration.handoff)
    if declaration.authentication != "none":
        _add(element, "authentication", declaration.authentication)
    for serial in declaration.sudi_serials:
        _add(element, "sudi-serial", serial)
    if declaration.stack:
        stack = _add(element, "stack")
        for member in declaration.stack_members:
            _add(stack, "member", member)
        if declaration.stack_size:
            _add(stack, "members", str(declaration.stack_size))
    if declaration.image_version or declaration.image_url or declaration.image_md5 or declaration.image_size:
        image = _add(element, "image")
        _add_leaves(image, (("version", declaration.image_version), ("url", declaration.image_url),
                            ("md5", declaration.image_md5)))
        if declaration.image_reload_wait != 60:
            _add(image, "reload-wait", str(declaration.image_reload_wait))
        if declaration.image_size:
            _add(image, "size", str(declaration.image_size))
    if declaration.username or declaration.password:
        credentials = _add(element, "credentials")
        _add_leaves(credentials, (("username", declaration.username), ("password", declaration.password)))
    if declaration.located and not by_location:
        located = _add(element, "located")
        _add_leaves(located, (("neighbor", declaration.located[0]), ("port", declaration.located[1])))
    return element


def _add_handoff(element: etree._Element, handoff: HandOff) -> None:
    """The ``controller`` container of a declaration, defaults left out."""
    controller = _add(element, "controller")
    _add_leaves(controller, (("name", handoff.name), ("address", handoff.address)))
    if handoff.port != 830:
        _add(controller, "port", str(handoff.port))
    if handoff.user != "netconf":
        _add(controller, "user", handoff.user)
    _add_leaves(controller, (("device-profile", handoff.profile),))
    if not handoff.check_host_key:
        _add(controller, "check-host-key", "false")


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
        work_element.set(qname(CLIXON_LIB_NS, "creator"), creator_tag(serial))
    _add(work_element, "revision", work.revision)
    if work.steps_revision:
        _add(work_element, "steps-revision", work.steps_revision)
    for step in work.steps:
        step_element = _add(work_element, "step")
        _add(step_element, "id", step.id)
        _add(step_element, "type", step.type)
        for name, value in step.params.items():
            param = _add(step_element, "param")
            _add(param, "name", name)
            if value != "":
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
    return Work(revision, steps, child_text(element, "steps-revision"))


# --------------------------------------------------------------------------- status

_STATUS_LEAVES = (
    ("state", "state"),
    ("revision", "revision"),
    ("steps-revision", "steps_revision"),
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
    flat = status.flat()
    _add_leaves(element, ((leaf, str(flat[attr])) for leaf, attr in _STATUS_LEAVES))
    _add(element, "attempts", str(flat["attempts"]))
    _add_leaves(
        element,
        (
            ("retry-at", format_time(flat["retry_at"])),
            ("last-contact", format_time(flat["last_contact"])),
            ("started", format_time(flat["started"])),
            ("image-file", flat["image_file"]),
            ("mode", flat["mode"]),
            ("flash", flat["flash"]),
            ("flash-free", "" if flat["flash_free"] is None else str(flat["flash_free"])),
            ("phase-since", format_time(flat["phase_since"])),
            ("deadline", format_time(flat["deadline"])),
            ("reloaded", format_time(flat["reloaded"])),
            ("secure", "true" if flat["secure"] else ""),
        ),
    )
    for slot, serial, pid, role in flat["members"]:
        member = _add(element, "member")
        _add_leaves(member, (("slot", str(slot)), ("serial", serial), ("pid", pid), ("role", role)))
    _add_leaves(element, (("host-key", flat["host_key"]),))
    if flat["handoff"]:
        handoff = _add(element, "handoff")
        _add_leaves(handoff, (
            ("state", flat["handoff"]), ("revision", flat["handoff_revision"]), ("device", flat["handoff_device"]),
            ("message", flat["handoff_message"]), ("attempts", str(flat["handoff_attempts"])),
            ("next-try", format_time(flat["handoff_next"])), ("time", format_time(flat["handoff_time"])),
        ))
    if flat["challenges"] or flat["proven_address"] or flat["throttled"]:
        auth = _add(element, "sudi")
        _add_leaves(auth, (("proven-address", flat["proven_address"]), ("proven-at", format_time(flat["proven_at"]))))
        for correlator, address, challenge, expires in flat["challenges"]:
            entry = _add(auth, "challenge")
            _add_leaves(entry, (("correlator", correlator), ("address", address), ("value", challenge),
                                ("expires", expires)))
        for address, until, failures in flat["throttled"]:
            entry = _add(auth, "throttle")
            _add_leaves(entry, (("address", address), ("until", until), ("failures", str(failures))))
    if flat["error_code"] or flat["error_message"]:
        error = _add(element, "last-error")
        _add_leaves(
            error,
            (
                ("code", flat["error_code"]),
                ("message", flat["error_message"]),
                ("step", flat["error_step"]),
                ("time", format_time(flat["error_time"])),
            ),
        )
    return element


def status_from_xml(element: etree._Element | None) -> Status | None:
    if element is None:
        return None
    values: dict[str, Any] = {attr: child_text(element, leaf) for leaf, attr in _STATUS_LEAVES}
    values["state"] = values["state"] or "planned"
    return Status.from_flat(
        **values,
        attempts=_number(child_text(element, "attempts")),
        retry_at=parse_time(child_text(element, "retry-at")),
        last_contact=parse_time(child_text(element, "last-contact")),
        started=parse_time(child_text(element, "started")),
        image_file=child_text(element, "image-file"),
        mode=child_text(element, "mode"),
        flash=child_text(element, "flash"),
        flash_free=_number(child_text(element, "flash-free"), -1) if child_text(element, "flash-free") else None,
        members=tuple(
            (_number(child_text(m, "slot")), child_text(m, "serial"), child_text(m, "pid"), child_text(m, "role"))
            for m in element.iterfind(q("member"))
        ),
        phase_since=parse_time(child_text(element, "phase-since")),
        deadline=parse_time(child_text(element, "deadline")),
        reloaded=parse_time(child_text(element, "reloaded")),
        secure=child_text(element, "secure") == "true",
        challenges=tuple(
            (child_text(c, "correlator"), child_text(c, "address"), child_text(c, "value"), child_text(c, "expires"))
            for c in element.iterfind(f"{q('sudi')}/{q('challenge')}")
        ),
        host_key=child_text(element, "host-key"),
        handoff=Handoff(child_text(element, "handoff", "state")),
        handoff_revision=child_text(element, "handoff", "revision"),
        handoff_device=child_text(element, "handoff", "device"),
        handoff_message=child_text(element, "handoff", "message"),
        handoff_attempts=_number(child_text(element, "handoff", "attempts")),
        handoff_next=parse_time(child_text(element, "handoff", "next-try")),
        handoff_time=parse_time(child_text(element, "handoff", "time")),
        proven_address=child_text(element, "sudi", "proven-address"),
        proven_at=parse_time(child_text(element, "sudi", "proven-at")),
        throttled=tuple(
            (child_text(t, "address"), child_text(t, "until"), _number(child_text(t, "failures")))
            for t in element.iterfind(f"{q('sudi')}/{q('throttle')}")
        ),
        error_code=child_text(element, "last-error", "code"),
        error_message=child_text(element, "last-error", "message"),
        error_step=child_text(element, "last-error", "step"),
        error_time=parse_time(child_text(element, "last-error", "time")),
    )


# --------------------------------------------------------------------------- unclaimed


def unclaimed_to_xml(entry: Unclaimed) -> etree._Element:
    """``/pnp/unclaimed`` of one entry: a leaf per field (``first_seen`` is ``first-seen``), in the YANG's order, empty
    ones left out."""
    element = etree.Element(q("unclaimed"), nsmap={None: PNP_NS})
    _add(element, "serial", entry.serial)
    times = _TIME_FIELDS[Unclaimed]
    _add_leaves(element, tuple(
        (name.replace("_", "-"), format_time(getattr(entry, name)) if name in times else getattr(entry, name))
        for name in _FIELD_NAMES[Unclaimed] if name != "serial"))
    return element


def unclaimed_from_xml(element: etree._Element) -> Unclaimed:
    times = _TIME_FIELDS[Unclaimed]
    values: dict[str, Any] = {}
    for name in _FIELD_NAMES[Unclaimed]:
        text = child_text(element, name.replace("_", "-"))
        values[name] = parse_time(text) if name in times else text
    return Unclaimed(**values)


def device_to_xml(record: DeviceRecord) -> etree._Element:
    """``/pnp/device`` of one record: serial and its status."""
    device = etree.Element(q("device"), nsmap={None: PNP_NS})
    _add(device, "serial", record.serial)
    if record.status is not None:
        device.append(status_to_xml(record.status))
    return device
