"""Cisco PnP protocol core, server side: parse what agents send, build what the server sends.

Theory of operation
-------------------
A PnP agent is always the HTTP client. It sends a WORK-REQUEST (``<info>`` in the
``work-info`` namespace, carrying a correlator it generated); the server answers
with one service request (``<request xmlns="urn:cisco:pnp:SERVICE">``) that copies
that correlator.  The agent does the work and posts a WORK-RESPONSE
(``<response>`` with the same correlator, ``success`` and maybe ``errorInfo``), or a
fault when it could not understand the request; the server always answers that
with a Bye.

The rule of this file: it knows bytes, XML and the PnP schemas, nothing else.  No
HTTP, no Flask, no Clixon, no files, no clock.  Parsing is liberal in what it
accepts (real devices send extra elements and values outside the schemas'
enumerations) and strict about safety: the parser refuses DTDs and entities,
never touches the network and bounds size and depth; every string a device sent
comes out cleaned of control characters and bounded in length, and a serial
number outside :data:`SERIAL_PATTERN` is refused.  Builders emit exactly what
Cisco's XSDs allow, in their order.  The agent's side of the protocol lives with
the simulator (``pnp_service.simulator.messages``).
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
from typing import Iterable, Mapping

from lxml import etree

from . import neighbours
from .neighbours import Neighbour
from .xmlsafe import clean_text, decimal, escape_attribute, parser, qname

#: The PnP envelope's namespace (Cisco's; not to be confused with model.PNP_NS, this project's YANG).
CISCO_PNP_NS = "urn:cisco:pnp"
PROTOCOL_VERSION = "1.0"

#: Largest agent message accepted, in bytes.  Real device-info responses with a
#: long file-system list stay well below this.
MAX_MESSAGE_BYTES = 256 * 1024
#: Deepest element nesting accepted; PnP messages are about six levels deep.
MAX_DEPTH = 32
#: Most elements accepted in one message.
MAX_ELEMENTS = 5000
#: What a serial number may look like; the YANG's ``serial-number`` type says the same.
SERIAL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: Longest device-reported value kept (hostname, PID, version, error text...).
MAX_TEXT = 255
MAX_MESSAGE_TEXT = 1024
MAX_OUTPUT = 64 * 1024


def service_ns(service: str) -> str:
    """Namespace of a PnP service, e.g. ``urn:cisco:pnp:device-info``."""
    return f"{CISCO_PNP_NS}:{service}"


class ProtocolError(ValueError):
    """An agent message that is not well-formed, not safe, or not PnP."""


# --------------------------------------------------------------------------- parsing


_DECLARATION = re.compile(rb"<\x00*!\x00*[DdEe]")


def parse_xml(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> etree._Element:
    """Parse untrusted XML safely and return its root element.

    Refuses documents over ``max_bytes``, any DOCTYPE (so no entity can be
    declared, internal or external), nesting deeper than :data:`MAX_DEPTH` and
    more than :data:`MAX_ELEMENTS` elements.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise ProtocolError("message must be bytes")
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    if not data.strip():
        raise ProtocolError("empty message")
    # A DTD is never legitimate in PnP.  Look before parsing so that no entity
    # declaration is ever processed, whatever its encoding tricks (UTF-16 and -32 put
    # NULs between the characters).
    if _DECLARATION.search(data):
        raise ProtocolError("DTDs and entity declarations are not allowed")
    try:
        root = etree.fromstring(bytes(data), parser())
    except (etree.XMLSyntaxError, ValueError) as exc:
        raise ProtocolError(f"malformed XML: {exc}") from None
    if root is None:
        raise ProtocolError("malformed XML: no root element")
    tree = root.getroottree()
    if tree.docinfo.internalDTD is not None or tree.docinfo.doctype:
        raise ProtocolError("DTDs and entity declarations are not allowed")
    # Every element costs at least one "<": small messages (every real agent message)
    # cannot break the bounds, so only larger ones are walked.
    if data.count(b"<") > MAX_DEPTH:
        count = 0
        for element in root.iter():
            count += 1
            if count > MAX_ELEMENTS:
                raise ProtocolError(f"message has more than {MAX_ELEMENTS} elements")
            if not isinstance(element.tag, str):  # entity references survive as nodes
                raise ProtocolError("entity references are not allowed")
        if _depth(root) > MAX_DEPTH:
            raise ProtocolError(f"message nests deeper than {MAX_DEPTH} levels")
    return root


def _depth(root: etree._Element) -> int:
    deepest, stack = 0, [(root, 1)]
    while stack:
        element, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in element)
    return deepest


# --------------------------------------------------------------------------- UDI


@dataclasses.dataclass(frozen=True)
class Udi:
    """Unique device identifier: product id, version id, serial number."""

    pid: str
    vid: str
    serial: str

    def __str__(self) -> str:
        return f"PID:{self.pid},VID:{self.vid},SN:{self.serial}"


def parse_udi(text: str) -> Udi:
    """Parse ``PID:C9300-24P,VID:V01,SN:FOC1234X0AB``.

    VID may be empty and PIDs contain ``/`` and ``-``: split on ``,`` then on the
    first ``:``; unknown fields are ignored.  SN is required and must be a serial
    number (:data:`SERIAL_PATTERN`): anything else could not be recorded anywhere.
    """
    fields: dict[str, str] = {}
    for part in (text or "").split(","):
        name, sep, value = part.partition(":")
        if sep:
            fields[name.strip().upper()] = value.strip()
    serial = fields.get("SN", "")
    if not serial:
        raise ProtocolError(f"UDI {clean_text(text, 80)!r} has no serial number (SN)")
    if not SERIAL_PATTERN.fullmatch(serial):
        raise ProtocolError(f"UDI serial {clean_text(serial, 80)!r} is not a serial number (letters, digits, . _ -)")
    return Udi(pid=clean_text(fields.get("PID", ""), 64), vid=clean_text(fields.get("VID", ""), 16), serial=serial)


# --------------------------------------------------------------------------- agent messages


@dataclasses.dataclass(frozen=True)
class ErrorInfo:
    severity: str = ""
    code: str = ""
    message: str = ""


@dataclasses.dataclass(frozen=True)
class WorkRequest:
    """An agent asking for work.

    ``reloaded``: the request carries a ``reason/reload`` block, the device's own word
    that it (re)started since it last called (``reason`` holds its code, e.g.
    ``PnP Service Info 2408``).
    """

    udi: Udi
    correlator: str
    hostname: str = ""
    auth_required: bool = False
    mac_address: str = ""
    reloaded: bool = False
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class FileSystem:
    """One entry of device-info's ``fileSystemList``; sizes in bytes, None when not reported or not a number."""

    name: str
    type: str = ""
    size: int | None = None
    free: int | None = None


@dataclasses.dataclass(frozen=True)
class StackMember:
    """One switch of a stack, from device-info's ``udi/stacked-switch/member-udi``."""

    slot: int
    udi: Udi


@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What a device-info response says, as real agents send it (any order, missing parts tolerated)."""

    platform: str = ""
    hostname: str = ""
    version: str = ""
    image_file: str = ""
    udi: str = ""
    file_systems: tuple[FileSystem, ...] = ()
    members: tuple[StackMember, ...] = ()

    @property
    def install_mode(self) -> bool:
        """Catalyst 9000 switches in install mode boot ``packages.conf``; bundle mode boots a ``.bin``."""
        return self.image_file.rstrip().lower().endswith("packages.conf")

    def file_system(self, name: str) -> FileSystem | None:
        wanted = name.rstrip(":").lower()
        return next((fs for fs in self.file_systems if fs.name.rstrip(":").lower() == wanted), None)

    @property
    def boot_file_system(self) -> str:
        """Where images go: the file system of the running image (``flash:`` on a C9300, ``bootflash:`` on a C9500)."""
        prefix = self.image_file.partition(":")[0] if ":" in self.image_file else ""
        if prefix and self.file_system(prefix) is not None:
            return prefix.lower() + ":"
        for candidate in ("flash", "bootflash"):
            if self.file_system(candidate) is not None:
                return candidate + ":"
        return (prefix.lower() + ":") if prefix else "flash:"


@dataclasses.dataclass(frozen=True)
class DeviceAuth:
    """What a device-auth response carries: the signature over the challenge and the SUDI certificate (both base64)."""

    challenge_response: str = ""
    sudi_cert: str = ""
    encryption: str = ""
    hashing: str = ""


@dataclasses.dataclass(frozen=True)
class WorkResponse:
    """An agent reporting the result of a service request.

    ``details`` holds what the service reported, flattened to cleaned strings (for
    device-info: ``platform``, ``version``, ``hostname``, ``image-file``,
    ``free:FS``; for cli-exec: ``output``).
    """

    udi: Udi
    service: str
    correlator: str
    success: bool
    error: ErrorInfo | None = None
    details: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: A device-info response, parsed.
    device: DeviceInfo | None = None
    #: A device-auth response's proof.
    auth: DeviceAuth | None = None
    #: A topology response's neighbours (what the device says is cabled to it).
    neighbours: tuple[Neighbour, ...] = ()


@dataclasses.dataclass(frozen=True)
class Fault:
    """The agent could not parse, or does not know, a request it was sent."""

    udi: Udi
    code: str
    string: str
    detail: str = ""


@functools.lru_cache(maxsize=512)
def _qualified_path(path: str, ns: str) -> str:
    return "/".join(qname(ns, p) for p in path.split("/"))


def _text(element: etree._Element | None, path: str, ns: str, limit: int = MAX_TEXT) -> str:
    if element is None:
        return ""
    found = element.find(_qualified_path(path, ns))
    if found is None:
        return ""
    return clean_text(found.text, limit)


def _all_text(element: etree._Element | None, limit: int) -> str:
    """Every piece of text under ``element`` (fault details nest in vendor elements)."""
    if element is None:
        return ""
    return clean_text(" ".join(t.strip() for t in element.itertext() if t.strip()), limit)


def _is_true(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes")


def _envelope(data: bytes) -> tuple[etree._Element, Udi, etree._Element]:
    root = parse_xml(data)
    if root.tag != qname(CISCO_PNP_NS, "pnp"):
        raise ProtocolError(f"root element is {clean_text(str(root.tag), 120)!r}, expected {{{CISCO_PNP_NS}}}pnp")
    body = [child for child in root if isinstance(child.tag, str)]
    if len(body) != 1:
        raise ProtocolError(f"<pnp> must have exactly one child, has {len(body)}")
    udi_text = root.get("udi", "")
    if not udi_text:
        raise ProtocolError("<pnp> has no udi attribute")
    return root, parse_udi(udi_text), body[0]


def _correlator(body: etree._Element, what: str) -> str:
    correlator = clean_text(body.get("correlator", ""), 128)
    if not correlator:
        raise ProtocolError(f"{what} has no correlator")
    return correlator


def parse_work_request(data: bytes) -> WorkRequest:
    """Parse the body of ``POST /pnp/WORK-REQUEST``."""
    _, udi, body = _envelope(data)
    ns = service_ns("work-info")
    if body.tag != qname(ns, "info"):
        raise ProtocolError(f"WORK-REQUEST body is {clean_text(str(body.tag), 120)!r}, expected work-info <info>")
    device = body.find(qname(ns, "deviceId"))
    # One pass over deviceId's children instead of a search per field.
    prefix = len(ns) + 2
    fields = {child.tag[prefix:]: child.text for child in device if isinstance(child.tag, str)} if device is not None else {}
    reload = body.find(_qualified_path("reason/reload", ns))
    return WorkRequest(
        udi=udi,
        correlator=_correlator(body, "WORK-REQUEST"),
        hostname=clean_text(fields.get("hostname"), 63),
        auth_required=_is_true(clean_text(fields.get("authRequired"), 8)),
        mac_address=clean_text(fields.get("macAddress"), 64) or _text(body, "macAddress", ns, 64),
        reloaded=reload is not None,
        reason=(_text(reload, "code", ns, 64) or _text(reload, "message", ns, 64)) if reload is not None else "",
    )


def parse_work_response(data: bytes) -> WorkResponse | Fault:
    """Parse the body of ``POST /pnp/WORK-RESPONSE``: a service response or a fault."""
    _, udi, body = _envelope(data)
    tag = etree.QName(body)
    namespace, local = tag.namespace or "", tag.localname
    if local != "response" or not namespace.startswith(CISCO_PNP_NS + ":"):
        raise ProtocolError(f"WORK-RESPONSE body is {clean_text(str(body.tag), 120)!r}, expected a PnP service <response>")
    service = clean_text(namespace[len(CISCO_PNP_NS) + 1 :], 64)
    if service == "fault":
        fault = body.find(qname(namespace, "fault"))
        return Fault(
            udi=udi,
            code=_text(fault, "faultcode", namespace),
            string=_text(fault, "faultstring", namespace, MAX_MESSAGE_TEXT),
            detail=_all_text(fault.find(qname(namespace, "detail")) if fault is not None else None, MAX_MESSAGE_TEXT),
        )
    correlator = _correlator(body, f"{service} response")
    success_text = body.get("success", "").strip().lower()
    if success_text not in ("0", "1", "true", "false"):
        raise ProtocolError(f"{service} response has success={clean_text(success_text, 20)!r}, expected 1 or 0")
    success = success_text in ("1", "true")
    error = None
    info = body.find(qname(namespace, "errorInfo"))
    if info is not None:
        error = ErrorInfo(
            severity=_text(info, "errorSeverity", namespace, 32),
            code=_text(info, "errorCode", namespace, 64),
            message=_text(info, "errorMessage", namespace, MAX_MESSAGE_TEXT),
        )
    extractor = _DETAIL_EXTRACTORS.get(service)
    details = extractor(body, namespace) if extractor and success else {}
    device = parse_device_info(body, namespace) if service == "device-info" and success else None
    auth = None
    if service == "device-auth" and success:
        auth = DeviceAuth(
            challenge_response=_text(body, "auth/challenge-response", namespace, MAX_OUTPUT),
            sudi_cert=_text(body, "auth/sudi-cert", namespace, MAX_OUTPUT),
            encryption=_text(body, "auth/encryption-method", namespace, 16),
            # The schema says hashing-method; the request's element is hash-method: accept both.
            hashing=_text(body, "auth/hashing-method", namespace, 16) or _text(body, "auth/hash-method", namespace, 16),
        )
    cabled = _topology(body, namespace) if service == "topology" and success else ()
    return WorkResponse(udi, service, correlator, success, error, details, device, auth, cabled)


def _number(text: str) -> int | None:
    """A size as agents write it; a negative one (a 32-bit overflow, seen on real devices) is unknown."""
    return decimal(text)


def parse_device_info(body: etree._Element, ns: str) -> DeviceInfo:
    """Read a device-info response the way real agents write it: any order, unknown blocks ignored."""
    file_systems = []
    for fs in body.iterfind(_qualified_path("fileSystemList/fileSystem", ns)):
        # Agents report file systems as attributes; tolerate child elements too.
        def value(name: str, limit: int = 32) -> str:
            return clean_text(fs.get(name), limit) or _text(fs, name, ns, limit)

        name = value("name")
        if name:
            file_systems.append(FileSystem(name, value("type"), _number(value("size", 24)), _number(value("freespace", 24))))
    members: list[StackMember] = []
    for member in body.iterfind(_qualified_path("udi/stacked-switch/member-udi", ns)):
        slot = clean_text(member.get("slot"), 4)
        try:
            udi = parse_udi(member.text or "")  # whole: a cut could leave another, shorter serial
        except ProtocolError:
            continue  # a member that names no valid serial cannot be matched to anything
        members.append(StackMember(decimal(slot) or len(members) + 1, udi))
    return DeviceInfo(
        platform=_text(body, "hardwareInfo/platformName", ns, 64),
        hostname=_text(body, "hardwareInfo/hostname", ns, 63),
        version=_text(body, "imageInfo/versionString", ns, 64),
        image_file=_text(body, "imageInfo/imageFile", ns),
        udi=_text(body, "udi/primary-chassis", ns),
        file_systems=tuple(file_systems),
        members=tuple(sorted(members, key=lambda m: m.slot)),
    )


def _cli_exec_details(body: etree._Element, ns: str) -> dict[str, str]:
    texts = [
        clean_text(element.text, MAX_OUTPUT, multiline=True)
        for element in body.iterfind(_qualified_path("execLog/dialogueLog/received/text", ns))
    ]
    return {"output": "\n".join(texts)[:MAX_OUTPUT]} if texts else {}


_DETAIL_EXTRACTORS = {"cli-exec": _cli_exec_details}


def _topology(body: etree._Element, ns: str) -> tuple[Neighbour, ...]:
    """The ``<topology>`` of a topology response (Cisco's pnp_topology_body.xsd): per ``<element>``, the local
    interface and the remote device's name, interface and platform; an element without them is skipped."""
    found = []
    for element in body.iterfind(_qualified_path("topology/element", ns)):
        local = element.find(qname(ns, "local"))
        remote = element.find(qname(ns, "remote"))
        device = _text(remote, "deviceName", ns, neighbours.MAX_NAME)
        interface = _text(remote, "interface", ns, neighbours.MAX_NAME) or _text(remote, "shortInterface", ns,
                                                                                 neighbours.MAX_NAME)
        if not device or not interface:
            continue
        found.append(Neighbour(
            neighbours.interface_name(_text(local, "interface", ns, neighbours.MAX_NAME)
                                      or _text(local, "shortInterface", ns, neighbours.MAX_NAME)),
            neighbours.device_name(device), neighbours.interface_name(interface),
            _text(remote, "platform", ns, neighbours.MAX_NAME)))
        if len(found) >= neighbours.MAX_NEIGHBOURS:
            break
    return tuple(found)


# --------------------------------------------------------------------------- server messages


@dataclasses.dataclass(frozen=True)
class Reload:
    """The ``<reload>`` sibling of config-upgrade and image-install requests."""

    reason: str = "pnp-service"
    delay_in: int = 0
    user: str = "pnp-service"
    save_config: bool = False


def child(parent: etree._Element, tag: str, text: str | None = None, **attrib: str) -> etree._Element:
    """A child element in its parent's namespace (PnP bodies keep one namespace throughout)."""
    # Read the namespace from the tag: nsmap builds a dict each call.
    element = etree.SubElement(parent, parent.tag[: parent.tag.index("}") + 1] + tag, attrib)
    if text is not None:
        element.text = text
    return element


def service_body(kind: str, service: str, correlator: str | None) -> etree._Element:
    """A ``<request>``, ``<response>`` or ``<info>`` in a service's namespace, with its correlator."""
    ns = service_ns(service)
    return etree.Element(qname(ns, kind), {"correlator": correlator} if correlator is not None else {}, nsmap={None: ns})


def serialize(udi: Udi | str, body: etree._Element, username: str | None = None, password: str | None = None) -> bytes:
    """The ``<pnp>`` envelope around one body element, with an XML declaration."""
    attrib = {"version": PROTOCOL_VERSION, "udi": str(udi)}
    if username is not None and password is not None:
        attrib["usr"] = username
        attrib["pwd"] = password
    root = etree.Element(qname(CISCO_PNP_NS, "pnp"), attrib, nsmap={None: CISCO_PNP_NS})
    root.append(body)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _add_reload(request: etree._Element, reload: Reload | None) -> None:
    if reload is None:
        child(request, "noReload")
        return
    element = child(request, "reload")
    child(element, "reason", reload.reason)
    child(element, "delayIn", str(reload.delay_in))
    child(element, "user", reload.user)
    child(element, "saveConfig", "true" if reload.save_config else "false")


@dataclasses.dataclass(frozen=True)
class Envelope:
    """Who a server message is for, and the login it carries when the agent asked."""

    udi: Udi | str
    correlator: str
    username: str | None = None
    password: str | None = None

    def wrap(self, body: etree._Element) -> bytes:
        return serialize(self.udi, body, self.username, self.password)


def device_info(env: Envelope, info_type: str = "all") -> bytes:
    request = service_body("request", "device-info", env.correlator)
    child(request, "deviceInfo", type=info_type)
    return env.wrap(request)


def config_upgrade(
    env: Envelope,
    location: str,
    *,
    checksum: str | None = None,
    apply_to: str = "startup",
    abort_on_syntax_fault: bool = True,
    reload: Reload | None = None,
) -> bytes:
    """Ask the agent to copy a configuration from ``location``.

    ``abortOnSyntaxFault`` is an empty element whose presence means "abort"; Cisco's
    schema makes it mandatory, so the default (abort) is the only schema-valid form.
    ``reload=None`` sends ``<noReload/>``; either it or ``<reload>`` is required, as
    a sibling of ``<config>``.
    """
    request = service_body("request", "config-upgrade", env.correlator)
    copy = child(child(request, "config", details="all"), "copy")
    source = child(copy, "source")
    child(source, "location", location)
    if checksum:
        child(source, "checksum", checksum)
    child(copy, "applyTo", apply_to)
    if abort_on_syntax_fault:
        child(copy, "abortOnSyntaxFault")
    _add_reload(request, reload)
    return env.wrap(request)


def image_install(
    env: Envelope,
    location: str,
    checksum: str,
    *,
    destination: str | None = "flash:",
    reload: Reload | None = Reload(reason="pnp-service image install"),
) -> bytes:
    request = service_body("request", "image-install", env.correlator)
    copy = child(child(request, "image"), "copy")
    source = child(copy, "source")
    child(source, "location", location)
    child(source, "checksum", checksum.lower())
    if destination:
        child(child(copy, "destination"), "location", destination)
    _add_reload(request, reload)
    return env.wrap(request)


def cli_exec(env: Envelope, command: str, max_wait: str = "PT60S",
             dialogue: Iterable[tuple[str, str]] = ()) -> bytes:
    """Run one exec command; ``dialogue`` answers its prompts: (text the prompt contains, reply)."""
    request = service_body("request", "cli-exec", env.correlator)
    execcli = child(request, "execCLI", maxWait=max_wait, xsd="false")
    child(execcli, "cmd", command)
    for expect, reply in dialogue:
        exchange = child(execcli, "dialogue")
        child(exchange, "expect", expect, match="embedded")
        child(exchange, "reply", reply)
    return env.wrap(request)


def topology(env: Envelope) -> bytes:
    """Ask for the device's neighbours (its CDP table, as the agent sees it)."""
    return env.wrap(service_body("request", "topology", env.correlator))


def cli_config_apply(env: Envelope, lines: Iterable[str], action_on_fail: str = "stop") -> bytes:
    request = service_body("request", "cli-config", env.correlator)
    apply = child(request, "configApply", **{"action-on-fail": action_on_fail})
    child(child(apply, "config-data"), "cli-config-data-block", "\n".join(lines))
    return env.wrap(request)


def cli_config_persist(env: Envelope) -> bytes:
    request = service_body("request", "cli-config", env.correlator)
    child(request, "configPersist")
    return env.wrap(request)


def certificate_install(env: Envelope, trustpool_url: str, *, ntp: str | None = None,
                        reconnect: tuple[str, int] | None = None) -> bytes:
    """Install a CA bundle into the device's trustpool (from ``trustpool_url``), maybe setting its clock from
    ``ntp`` first (certificates need the time), then reconnect the agent over HTTPS to ``reconnect`` (host, port)."""
    request = service_body("request", "certificate-install", env.correlator)
    install = child(request, "certificateInstall")
    cert = child(install, "cert")
    if ntp:
        child(child(child(cert, "set"), "ntp"), "ip-address", ntp)
    child(child(child(child(child(cert, "install"), "trustpool"), "copy"), "source"), "location", trustpool_url)
    if reconnect is not None:
        host, port = reconnect
        primary = child(child(install, "reconnect"), "primary-server")
        child(primary, "protocol", "https")
        address = child(primary, "server-address")
        try:
            kind = "ipv4" if ipaddress.ip_address(host).version == 4 else "ipv6"
        except ValueError:
            kind = "host"
        child(address, kind, host)
        child(address, "port", str(port))
    return env.wrap(request)


def device_auth(env: Envelope, challenge: str, encryption: str = "RSA,ECDSA", hashing: str = "SHA256,SHA512") -> bytes:
    """Ask the device to prove its SUDI identity: sign ``challenge`` with its SUDI key and send its certificate."""
    request = service_body("request", "device-auth", env.correlator)
    auth = child(request, "deviceAuth")
    child(auth, "challenge-request", challenge)
    child(auth, "encryption-method", encryption)
    child(auth, "hash-method", hashing)
    return env.wrap(request)


def capability(env: Envelope) -> bytes:
    return env.wrap(service_body("request", "capability", env.correlator))


# Backoffs and byes answer most polls.  Each distinct message is built once with
# lxml around two marks, and later calls only fill in the escaped UDI and
# correlator: the same bytes, without building a tree per poll.
_UDI_MARK, _CORRELATOR_MARK = "pnp-udi-mark-5f1c", "pnp-correlator-mark-5f1c"


@functools.lru_cache(maxsize=512)
def _stamp(kind: str, *args) -> tuple[str, str, str]:
    marked = Envelope(_UDI_MARK, _CORRELATOR_MARK)
    data = (_build_bye(marked) if kind == "bye" else _build_backoff(marked, *args)).decode("utf-8")
    head, rest = data.split(_UDI_MARK)
    middle, tail = rest.split(_CORRELATOR_MARK)
    return head, middle, tail


def _stamped(env: Envelope, kind: str, *args) -> bytes:
    head, middle, tail = _stamp(kind, *args)
    udi, correlator = escape_attribute(str(env.udi)), escape_attribute(env.correlator)
    return f"{head}{udi}{middle}{correlator}{tail}".encode("utf-8")


def backoff(
    env: Envelope,
    reason: str,
    *,
    seconds: int | None = None,
    default_minutes: int | None = None,
    terminate: bool = False,
) -> bytes:
    """Tell the agent to call back later, in one of the three schema forms.

    Exactly one of ``seconds`` (callbackAfter, at most 47:59:59), ``default_minutes``
    (1..2880) or ``terminate`` must be given.
    """
    if env.username is None:
        return _stamped(env, "backoff", reason, seconds, default_minutes, terminate)
    return _build_backoff(env, reason, seconds, default_minutes, terminate)


#: callbackAfter allows hours 0..47.
MAX_CALLBACK_SECONDS = 47 * 3600 + 59 * 60 + 59


def _build_backoff(
    env: Envelope, reason: str, seconds: int | None, default_minutes: int | None, terminate: bool
) -> bytes:
    chosen = sum((seconds is not None, default_minutes is not None, terminate))
    if chosen != 1:
        raise ValueError("backoff takes exactly one of seconds, default_minutes, terminate")
    request = service_body("request", "backoff", env.correlator)
    element = child(request, "backoff")
    child(element, "reason", reason)
    if seconds is not None:
        seconds = min(MAX_CALLBACK_SECONDS, max(1, int(seconds)))
        after = child(element, "callbackAfter")
        child(after, "hours", str(seconds // 3600))
        child(after, "minutes", str(seconds % 3600 // 60))
        child(after, "seconds", str(seconds % 60))
    elif default_minutes is not None:
        if not 1 <= default_minutes <= 2880:
            raise ValueError("defaultMinutes must be within 1..2880")
        child(element, "defaultMinutes", str(default_minutes))
    else:
        child(element, "terminate")
    return env.wrap(request)


def bye(env: Envelope) -> bytes:
    return _stamped(env, "bye") if env.username is None else _build_bye(env)


def _build_bye(env: Envelope) -> bytes:
    info = service_body("info", "work-info", env.correlator)
    child(child(info, "workInfo"), "bye")
    return env.wrap(info)
