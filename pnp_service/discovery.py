"""How devices find the listener: the DHCP option 43 string (and its DHCPv6 form)."""

from __future__ import annotations

import ipaddress


def option43(server: str, port: int | None = None, https: bool = False, debug: bool = False) -> str:
    """The option 43 string, e.g. ``5A1N;B2;K4;I192.0.2.10;J80``.

    B says what I holds (1 host name, 2 IPv4, 3 IPv6), K the transport
    (4 HTTP, 5 HTTPS), J the port; D/N turns agent debug on or off.
    """
    if not server or not all(c.isalnum() or c in ".-:" for c in server):
        raise ValueError(f"{server!r} is not an IP address or a host name")
    try:
        address = ipaddress.ip_address(server)
        kind = "2" if address.version == 4 else "3"
    except ValueError:
        if ":" in server:
            raise ValueError(f"{server!r} is not an IPv6 address") from None
        kind = "1"
    port = port or (443 if https else 80)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    return f"5A1{'D' if debug else 'N'};B{kind};K{'5' if https else '4'};I{server};J{port}"
