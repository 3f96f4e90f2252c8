"""Neighbours as agents tell them (CLI output in IOS-XE's formats), their normal form, and matching to locations."""

from __future__ import annotations

import pytest

from pnp_service.neighbours import (MAX_NEIGHBOURS, Location, Neighbour, device_name, interface_name, matches,
                                    parse_cdp_detail, parse_lldp_detail)

# The layout of `show cdp neighbors detail` on IOS-XE 17 (a Catalyst 9300 uplinked to two distribution switches
# and an IP phone on an access port).
CDP_DETAIL = """\
-------------------------
Device ID: dist-sw-1.example.com
Entry address(es): 
  IP address: 192.0.2.1
Platform: cisco C9500-48Y4C,  Capabilities: Router Switch IGMP 
Interface: TenGigabitEthernet1/1/1,  Port ID (outgoing port): GigabitEthernet1/0/48
Holdtime : 161 sec

Version :
Cisco IOS Software [Cupertino], Catalyst L3 Switch Software (CAT9K_IOSXE), Version 17.9.4, RELEASE SOFTWARE (fc5)
Technical Support: http://www.cisco.com/techsupport
Copyright (c) 1986-2023 by Cisco Systems, Inc.
Compiled Wed 26-Jul-23 10:01 by mcpre

advertisement version: 2
VTP Management Domain: ''
Native VLAN: 1
Duplex: full
Management address(es): 
  IP address: 192.0.2.1

-------------------------
Device ID: DIST-SW-2(FDO23451ABC)
Entry address(es): 
  IP address: 192.0.2.2
Platform: N9K-C93180YC-FX,  Capabilities: Router Switch IGMP Filtering Supports-STP-Dispute 
Interface: TenGigabitEthernet1/1/2,  Port ID (outgoing port): Ethernet1/48
Holdtime : 150 sec

-------------------------
Device ID: SEP001122334455
Entry address(es): 
Platform: Cisco IP Phone 8865,  Capabilities: Host Phone Two-port Mac Relay 
Interface: GigabitEthernet1/0/5,  Port ID (outgoing port): Port 1
Holdtime : 143 sec


Total cdp entries displayed : 3
"""

# `show lldp neighbors detail` on IOS-XE 17: the local interface and the port id abbreviated, a port description.
LLDP_DETAIL = """\
------------------------------------------------
Local Intf: Te1/1/1
Chassis id: 70b3.1722.8100
Port id: Gi1/0/48
Port Description: uplink to access-3
System Name: dist-sw-1.example.com

System Description: 
Cisco IOS Software [Cupertino], Catalyst L3 Switch Software (CAT9K_IOSXE), Version 17.9.4, RELEASE SOFTWARE (fc5)

Time remaining: 107 seconds
System Capabilities: B,R
Enabled Capabilities: B,R
Management Addresses:
    IP: 192.0.2.1
Auto Negotiation - not supported
Physical media capabilities - not advertised
Media Attachment Unit type - not advertised
Vlan ID: - not advertised

------------------------------------------------
Local Intf: Te1/1/2
Chassis id: 0011.2233.4466
Port id: 0011.2233.4467
Port Description: GigabitEthernet1/0/47
System Name: dist-sw-2

Time remaining: 95 seconds

Total entries displayed: 2
"""


def test_cdp_detail_gives_each_neighbour_with_both_ends_and_the_platform():
    assert parse_cdp_detail(CDP_DETAIL) == [
        Neighbour("TenGigabitEthernet1/1/1", "dist-sw-1", "GigabitEthernet1/0/48", "cisco C9500-48Y4C"),
        Neighbour("TenGigabitEthernet1/1/2", "dist-sw-2", "Ethernet1/48", "N9K-C93180YC-FX"),
        Neighbour("GigabitEthernet1/0/5", "sep001122334455", "Port 1", "Cisco IP Phone 8865"),
    ]


def test_lldp_detail_takes_the_port_id_when_it_names_an_interface_else_the_description():
    assert parse_lldp_detail(LLDP_DETAIL) == [
        Neighbour("TenGigabitEthernet1/1/1", "dist-sw-1", "GigabitEthernet1/0/48"),
        Neighbour("TenGigabitEthernet1/1/2", "dist-sw-2", "GigabitEthernet1/0/47"),
    ]


@pytest.mark.parametrize("output", ["", "% CDP is not enabled\n", "Total cdp entries displayed : 0\n",
                                    "garbage\n-------------------------\nDevice ID: x\n"])
def test_output_without_a_whole_neighbour_gives_none(output):
    assert parse_cdp_detail(output) == [] and parse_lldp_detail(output) == []


def test_a_flood_of_neighbours_is_cut_and_their_text_is_cleaned():
    block = "-------------------------\nDevice ID: sw\x1b[2J{n}\nInterface: Gi1/0/1,  Port ID (outgoing port): Gi1/0/{n}\n"
    found = parse_cdp_detail("".join(block.format(n=n) for n in range(MAX_NEIGHBOURS + 50)))
    assert len(found) == MAX_NEIGHBOURS
    assert all("\x1b" not in n.device for n in found)


@pytest.mark.parametrize("written, normal", [
    ("Gi1/0/48", "GigabitEthernet1/0/48"), ("gi 1/0/48", "GigabitEthernet1/0/48"), ("Gig 0/2", "GigabitEthernet0/2"),
    ("GigabitEthernet1/0/48", "GigabitEthernet1/0/48"), ("Te1/1/1", "TenGigabitEthernet1/1/1"),
    ("Tw1/0/1", "TwoGigabitEthernet1/0/1"), ("Twe1/0/1", "TwentyFiveGigE1/0/1"), ("Fo1/1/1", "FortyGigabitEthernet1/1/1"),
    ("Hu1/0/49", "HundredGigE1/0/49"), ("Fa0/1", "FastEthernet0/1"), ("Eth1/48", "Ethernet1/48"),
    ("Po10", "Port-channel10"), ("mgmt0", "mgmt0"), ("Port 1", "Port 1"),
])
def test_interface_names_in_normal_form(written, normal):
    assert interface_name(written) == normal


def test_device_names_lose_domain_case_and_an_nxos_serial():
    assert device_name("DIST-SW-1.example.com") == device_name("dist-sw-1(FDO123)") == "dist-sw-1"


def test_locations_match_in_normal_form_once_each_in_declared_order():
    neighbours = parse_cdp_detail(CDP_DETAIL)
    declared = [Location("dist-sw-2", "Eth1/48"), Location("DIST-SW-1.example.com", "Gi1/0/48"),
                Location("dist-sw-1", "GigabitEthernet1/0/48"), Location("dist-sw-1", "Gi1/0/47")]
    assert matches(neighbours, declared) == [Location("dist-sw-2", "Ethernet1/48"),
                                             Location("dist-sw-1", "GigabitEthernet1/0/48")]
    assert str(declared[1]) == "dist-sw-1 GigabitEthernet1/0/48"
    assert matches(neighbours, [Location("dist-sw-1", "Gi1/0/1")]) == []


def simulated_answer(device, request_bytes):
    from pnp_service import protocol
    from pnp_service.simulator import AgentSimulator, messages

    simulator = AgentSimulator("http://127.0.0.1:9")
    reply, _ = simulator._perform(device, None, messages.parse_server_message(request_bytes))
    return protocol.parse_work_response(reply)


def test_the_simulator_tells_its_neighbours_by_topology_and_by_both_cli_commands():
    from pnp_service import protocol
    from pnp_service.simulator import SimulatedDevice

    device = SimulatedDevice("SIM1", neighbors=(("dist-sw-1.example.com", "Gi1/0/48"), ("dist-sw-2", "Gi1/0/48")))
    env = protocol.Envelope(device.udi, "c-1")
    expected = [Location("dist-sw-1", "GigabitEthernet1/0/48"), Location("dist-sw-2", "GigabitEthernet1/0/48")]
    by_topology = simulated_answer(device, protocol.topology(env)).neighbours
    cdp = parse_cdp_detail(simulated_answer(device, protocol.cli_exec(env, "show cdp neighbors detail")).details["output"])
    lldp = parse_lldp_detail(
        simulated_answer(device, protocol.cli_exec(env, "show lldp neighbors detail")).details["output"])
    for told in (list(by_topology), cdp, lldp):
        assert [n.location for n in told] == expected
        assert [n.local_interface for n in told] == ["TenGigabitEthernet1/1/1", "TenGigabitEthernet1/1/2"]
    device.topology = False
    assert isinstance(simulated_answer(device, protocol.topology(env)), protocol.Fault)


def test_the_agent_command_takes_neighbours():
    import argparse

    from pnp_service.cli.agent import neighbor_spec

    assert neighbor_spec("dist-sw-1:Gi1/0/48") == ("dist-sw-1", "Gi1/0/48")
    with pytest.raises(argparse.ArgumentTypeError):
        neighbor_spec("dist-sw-1")
