"""The agent's side of the PnP protocol: what an IOS-XE agent sends, and how it reads what the server sent.

Owns the messages the simulator (and the tests) play as a device.  The server
never uses this module: its side is :mod:`pnp_service.protocol`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Sequence

from lxml import etree

from .. import protocol
from ..protocol import ErrorInfo, Udi, service_ns
from ..xmlsafe import qname


_sub, _body = protocol.child, protocol.service_body


# ----------------------------------------------------------------- reading server messages


@dataclasses.dataclass(frozen=True)
class ServerMessage:
    """A server message as an agent sees it: the service and its request element."""

    service: str
    correlator: str
    body: etree._Element
    username: str | None = None
    password: str | None = None

    def find_text(self, path: str) -> str:
        found = self.find(path)
        return (found.text or "").strip() if found is not None else ""

    def find(self, path: str) -> etree._Element | None:
        ns = service_ns(self.service)
        return self.body.find("/".join(qname(ns, p) for p in path.split("/")))


def parse_server_message(data: bytes) -> ServerMessage:
    root = protocol.parse_xml(data)
    if root.tag != qname(protocol.CISCO_PNP_NS, "pnp"):
        raise protocol.ProtocolError(f"unexpected root {root.tag!r}")
    body = root[0]
    namespace = etree.QName(body).namespace or ""
    if not namespace.startswith(protocol.CISCO_PNP_NS + ":"):
        raise protocol.ProtocolError(f"unexpected body {body.tag!r}")
    service = namespace[len(protocol.CISCO_PNP_NS) + 1 :]
    if service == "work-info" and body.find(f"{qname(namespace, 'workInfo')}/{qname(namespace, 'bye')}") is not None:
        return ServerMessage("bye", body.get("correlator", ""), body)
    return ServerMessage(service, body.get("correlator", ""), body, root.get("usr"), root.get("pwd"))


# -------------------------------------------------------------------- what an agent sends


def work_request(udi: Udi | str, correlator: str, hostname: str = "Switch", auth_required: bool = False,
                 reloaded: str = "") -> bytes:
    """A work request; ``reloaded`` (e.g. ``reload-command``) adds the reason block an agent sends after a reload."""
    info = _body("info", "work-info", correlator)
    device = _sub(info, "deviceId")
    _sub(device, "udi", str(udi))
    _sub(device, "hostname", hostname)
    _sub(device, "authRequired", "true" if auth_required else "false")
    _sub(device, "viaProxy", "false")
    _sub(device, "securityAdvise", "false")
    if reloaded:
        reload = _sub(_sub(info, "reason"), "reload")
        _sub(reload, "message", reloaded)
        _sub(reload, "code", "PnP Service Info 2408")
        _sub(reload, "startupConfigPresent", "false")
    return protocol.serialize(udi, info)


def response(
    udi: Udi | str,
    service: str,
    correlator: str,
    success: bool = True,
    error: ErrorInfo | None = None,
    build: Callable[[etree._Element], None] | None = None,
) -> bytes:
    body = _body("response", service, correlator)
    body.set("success", "1" if success else "0")
    if error is not None:
        info = _sub(body, "errorInfo")
        _sub(info, "errorSeverity", error.severity or "ERROR")
        _sub(info, "errorCode", error.code)
        _sub(info, "errorMessage", error.message)
    if build is not None:
        build(body)
    return protocol.serialize(udi, body)


@dataclasses.dataclass(frozen=True)
class FileSystem:
    name: str = "flash"
    size: int = 16_000_000_000
    free: int = 8_000_000_000
    type: str = "disk"


def device_info(
    udi: Udi,
    correlator: str,
    *,
    platform: str,
    version: str,
    hostname: str,
    flash_free: int = 8_000_000_000,
    image_file: str = "flash:packages.conf",
    file_systems: Sequence[FileSystem] | None = None,
    members: Sequence[tuple[int, Udi]] = (),
) -> bytes:
    """A device-info response as a Catalyst 9000 sends it; ``members`` (slot, UDI) for a stack."""
    def build(body: etree._Element) -> None:
        udis = _sub(body, "udi")
        _sub(udis, "primary-chassis", str(udi))
        if members:
            stacked = _sub(udis, "stacked-switch")
            for slot, member in members:
                _sub(stacked, "member-udi", str(member), slot=str(slot))
        image = _sub(body, "imageInfo")
        _sub(image, "versionString", version)
        _sub(image, "imageFile", image_file)
        hardware = _sub(body, "hardwareInfo")
        _sub(hardware, "hostname", hostname)
        _sub(hardware, "vendorString", "Cisco")
        _sub(hardware, "platformName", platform)
        fs_list = _sub(body, "fileSystemList")
        for fs in file_systems or (FileSystem(size=flash_free * 2, free=flash_free),):
            _sub(fs_list, "fileSystem", name=fs.name, type=fs.type, size=str(fs.size), freespace=str(fs.free))

    return response(udi, "device-info", correlator, True, None, build)


def cli_exec_output(udi: Udi, correlator: str, command: str, output: str) -> bytes:
    def build(body: etree._Element) -> None:
        log = _sub(_sub(body, "execLog"), "dialogueLog")
        _sub(_sub(log, "sent"), "text", command)
        _sub(_sub(log, "received"), "text", output)

    return response(udi, "cli-exec", correlator, True, None, build)


@dataclasses.dataclass(frozen=True)
class Uplink:
    """A cable as the simulated device sees it: its own interface, the device at the other end and its port."""

    local: str
    device: str
    port: str
    platform: str = "cisco C9500-48Y4C"
    mac: str = "70b3.1722.8100"


def _short(interface: str) -> str:
    """IOS's short form of an interface name (TenGigabitEthernet1/1/1 -> Te1/1/1)."""
    match = re.fullmatch(r"([A-Za-z-]+?)([0-9].*)", interface)
    if not match:
        return interface
    kind = match.group(1)
    short = {"TwentyFiveGigE": "Twe", "TwoGigabitEthernet": "Tw", "HundredGigE": "Hu"}.get(kind, kind[:2])
    return short + match.group(2)


def topology_response(udi: Udi, correlator: str, uplinks: Sequence[Uplink]) -> bytes:
    """A topology response (Cisco's pnp_topology_body.xsd): an element per CDP neighbour."""
    def build(body: etree._Element) -> None:
        topology = _sub(body, "topology")
        for uplink in uplinks:
            element = _sub(topology, "element")
            local = _sub(element, "local")
            _sub(local, "interface", uplink.local)
            _sub(local, "shortInterface", _short(uplink.local))
            _sub(local, "macAddress", "0011.2233.4401")
            remote = _sub(element, "remote")
            _sub(remote, "interface", uplink.port)
            _sub(remote, "shortInterface", _short(uplink.port))
            _sub(remote, "macAddress", uplink.mac)
            _sub(remote, "deviceName", uplink.device)
            _sub(remote, "platform", uplink.platform)
            _sub(remote, "version", "17.9.4")

    return response(udi, "topology", correlator, True, None, build)


def cdp_neighbors_detail(uplinks: Sequence[Uplink]) -> str:
    """``show cdp neighbors detail`` as IOS-XE 17 prints it."""
    blocks = []
    for uplink in uplinks:
        blocks.append(
            "-------------------------\n"
            f"Device ID: {uplink.device}\n"
            "Entry address(es): \n"
            "  IP address: 192.0.2.1\n"
            f"Platform: {uplink.platform},  Capabilities: Router Switch IGMP \n"
            f"Interface: {uplink.local},  Port ID (outgoing port): {uplink.port}\n"
            "Holdtime : 161 sec\n\n"
            "Version :\n"
            "Cisco IOS Software [Cupertino], Catalyst L3 Switch Software (CAT9K_IOSXE), Version 17.9.4, RELEASE "
            "SOFTWARE (fc5)\n\n"
            "advertisement version: 2\n"
            "Duplex: full\n"
            "Management address(es): \n"
            "  IP address: 192.0.2.1\n\n")
    return "".join(blocks) + f"\nTotal cdp entries displayed : {len(uplinks)}\n"


def lldp_neighbors_detail(uplinks: Sequence[Uplink]) -> str:
    """``show lldp neighbors detail`` as IOS-XE 17 prints it (its interfaces in short form)."""
    blocks = []
    for uplink in uplinks:
        blocks.append(
            "------------------------------------------------\n"
            f"Local Intf: {_short(uplink.local)}\n"
            f"Chassis id: {uplink.mac}\n"
            f"Port id: {_short(uplink.port)}\n"
            f"Port Description: {uplink.port}\n"
            f"System Name: {uplink.device}\n\n"
            "System Description: \n"
            "Cisco IOS Software [Cupertino], Catalyst L3 Switch Software (CAT9K_IOSXE), Version 17.9.4, RELEASE "
            "SOFTWARE (fc5)\n\n"
            "Time remaining: 107 seconds\n"
            "System Capabilities: B,R\n"
            "Enabled Capabilities: B,R\n"
            "Management Addresses:\n"
            "    IP: 192.0.2.1\n\n")
    return "".join(blocks) + f"\nTotal entries displayed: {len(uplinks)}\n"


def fault(udi: Udi | str, code: str, string: str) -> bytes:
    body = _body("response", "fault", None)
    element = _sub(body, "fault")
    _sub(element, "faultcode", code)
    _sub(element, "faultstring", string)
    _sub(element, "detail", "")
    return protocol.serialize(udi, body)


def device_auth_response(udi: Udi, correlator: str, certificate_pem: bytes, signature: bytes,
                         encryption: str = "ECDSA", hashing: str = "SHA256") -> bytes:
    """A device-auth answer: the signature over the challenge and the SUDI certificate, both base64."""
    import base64

    def build(body: etree._Element) -> None:
        auth = _sub(body, "auth")
        _sub(auth, "challenge-response", base64.b64encode(signature).decode())
        _sub(auth, "sudi-cert", base64.b64encode(certificate_pem).decode())
        _sub(auth, "encryption-method", encryption)
        _sub(auth, "hashing-method", hashing)

    return response(udi, "device-auth", correlator, True, None, build)


def sign_challenge(key_pem: bytes, challenge: str, hashing: str = "SHA256") -> tuple[bytes, str]:
    """What a SUDI chip does: sign the challenge with the device key; the signature and the method's name."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    key = serialization.load_pem_private_key(key_pem, password=None)
    digest = hashes.SHA512() if hashing == "SHA512" else hashes.SHA256()
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(challenge.encode(), padding.PKCS1v15(), digest), "RSA"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(challenge.encode(), ec.ECDSA(digest)), "ECDSA"
    raise ValueError("a SUDI key is RSA or ECDSA")
