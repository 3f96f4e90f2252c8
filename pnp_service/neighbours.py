"""What a device says is cabled to it, and the locations that matches: the ground of declaring a switch by where it is
plugged in (an upstream device's name and port) instead of by its serial.

Owns the neighbour record, the two ways an agent can tell it (the PnP topology service's answer is parsed in
``protocol``; the output of ``show cdp neighbors detail`` and ``show lldp neighbors detail``, in the formats IOS-XE
prints, is parsed here), the normal form of interface and device names that makes ``Gi1/0/48`` on
``dist-sw-1.example.com`` the same port as ``GigabitEthernet1/0/48`` on ``DIST-SW-1``, and the matching of neighbours
to declared locations.  Sans-I/O: text in, records out.

Everything here is what the device claims about itself: anyone on the PnP VLAN can send any neighbour list, so a
location is evidence only as far as the device is trusted (a proven SUDI) or the upstream device confirms it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable

from .xmlsafe import clean_text

#: Neighbours read from one answer at most (a 48-port switch with a few per port): the rest are ignored.
MAX_NEIGHBOURS = 256
#: Longest interface or device name kept.
MAX_NAME = 128


@dataclasses.dataclass(frozen=True)
class Neighbour:
    """One neighbour as the device sees it: on which of its own interfaces, which device, on which of that one's."""

    local_interface: str
    device: str
    interface: str
    platform: str = ""

    @property
    def location(self) -> Location:
        return Location(self.device, self.interface)


@dataclasses.dataclass(frozen=True)
class Location:
    """An upstream device and one of its ports, in normal form (compare with ==)."""

    device: str
    port: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "device", device_name(self.device))
        object.__setattr__(self, "port", interface_name(self.port))

    def __str__(self) -> str:
        return f"{self.device} {self.port}"


# --------------------------------------------------------------------------- normal forms

#: Interface types as IOS-XE, NX-OS and their abbreviations write them (lower case), and their full names.
_INTERFACE_TYPES = {
    "hundredgige": "HundredGigE", "hu": "HundredGigE",
    "fortygigabitethernet": "FortyGigabitEthernet", "fo": "FortyGigabitEthernet",
    "twentyfivegige": "TwentyFiveGigE", "twe": "TwentyFiveGigE",
    "tengigabitethernet": "TenGigabitEthernet", "te": "TenGigabitEthernet",
    "fivegigabitethernet": "FiveGigabitEthernet", "fi": "FiveGigabitEthernet",
    "twogigabitethernet": "TwoGigabitEthernet", "tw": "TwoGigabitEthernet",
    "gigabitethernet": "GigabitEthernet", "gig": "GigabitEthernet", "gi": "GigabitEthernet",
    "fastethernet": "FastEthernet", "fa": "FastEthernet",
    "port-channel": "Port-channel", "po": "Port-channel",
    "appgigabitethernet": "AppGigabitEthernet", "ap": "AppGigabitEthernet",
    "ethernet": "Ethernet", "eth": "Ethernet", "et": "Ethernet",
}
_INTERFACE = re.compile(r"([A-Za-z][A-Za-z-]*?)\s*([0-9][0-9/.:]*)")


def interface_name(name: str) -> str:
    """``Gi1/0/48``, ``gi 1/0/48`` and ``GigabitEthernet1/0/48`` all as ``GigabitEthernet1/0/48``; a name of another
    form is kept as it is (stripped)."""
    name = clean_text(name, MAX_NAME)
    match = _INTERFACE.fullmatch(name)
    if match is None or match.group(1).lower() not in _INTERFACE_TYPES:
        return name
    return _INTERFACE_TYPES[match.group(1).lower()] + match.group(2)


def _names_an_interface(name: str) -> bool:
    match = _INTERFACE.fullmatch(name.strip())
    return match is not None and match.group(1).lower() in _INTERFACE_TYPES


def device_name(name: str) -> str:
    """A device's name without its domain and in lower case: ``DIST-SW-1.example.com`` is ``dist-sw-1``.  NX-OS
    adds the serial in parentheses to a CDP device ID (``dist-sw-1(FDO1234)``): dropped too."""
    name = re.sub(r"\([^)]*\)$", "", clean_text(name, MAX_NAME))
    return name.split(".", 1)[0].lower()


# --------------------------------------------------------------------------- CLI output


def parse_cdp_detail(output: str) -> list[Neighbour]:
    """The neighbours in the output of ``show cdp neighbors detail`` (IOS, IOS-XE, NX-OS): a block per neighbour
    with ``Device ID:``, ``Platform: ...,`` and ``Interface: LOCAL,  Port ID (outgoing port): REMOTE``."""
    neighbours = []
    for block in re.split(r"\n\s*-{5,}\s*\n", "\n" + output):
        device = _field(block, r"Device ID\s*:\s*(\S.*)")
        ports = re.search(r"Interface\s*:\s*([^,\n]+?)\s*,\s*Port ID \(outgoing port\)\s*:\s*(\S.*)", block)
        if not device or ports is None:
            continue
        platform = _field(block, r"Platform\s*:\s*([^,\n]+)")
        neighbours.append(Neighbour(interface_name(ports.group(1)), device_name(device),
                                    interface_name(ports.group(2)), clean_text(platform, MAX_NAME)))
        if len(neighbours) >= MAX_NEIGHBOURS:
            break
    return neighbours


def parse_lldp_detail(output: str) -> list[Neighbour]:
    """The neighbours in the output of ``show lldp neighbors detail`` (IOS-XE): a block per neighbour with
    ``Local Intf:``, ``Port id:``, ``Port Description:`` and ``System Name:``.  The port is its id when that names an
    interface, else its description (a port id may be a MAC address or a number)."""
    neighbours = []
    for block in re.split(r"\n\s*-{5,}\s*\n", "\n" + output):
        local = _field(block, r"Local Intf\s*:\s*(\S.*)")
        device = _field(block, r"System Name\s*:\s*(\S.*)")
        port_id = _field(block, r"Port id\s*:\s*(\S.*)")
        description = _field(block, r"Port Description\s*:\s*(\S.*)")
        if not local or not device or not (port_id or description):
            continue
        port = interface_name(port_id if _names_an_interface(port_id) or not description else description)
        neighbours.append(Neighbour(interface_name(local), device_name(device), port))
        if len(neighbours) >= MAX_NEIGHBOURS:
            break
    return neighbours


def _field(block: str, pattern: str) -> str:
    match = re.search(pattern, block)
    return match.group(1).strip() if match else ""


# --------------------------------------------------------------------------- matching


def matches(neighbours: Iterable[Neighbour], locations: Iterable[Location]) -> list[Location]:
    """The declared locations the neighbours put the device at (each once, in the order declared)."""
    seen = {neighbour.location for neighbour in neighbours}
    return [location for location in dict.fromkeys(locations) if location in seen]


__all__ = ["Location", "MAX_NEIGHBOURS", "Neighbour", "device_name", "interface_name", "matches", "parse_cdp_detail",
           "parse_lldp_detail"]
