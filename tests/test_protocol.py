"""The sans-I/O protocol core: UDIs, agent messages, server messages, hostile XML."""

from __future__ import annotations

import pytest
from lxml import etree

from pnp_service import protocol
from pnp_service.neighbours import (MAX_NEIGHBOURS, Location, Neighbour, device_name, interface_name, matches,
                                    parse_cdp_detail, parse_lldp_detail)
from pnp_service.simulator import messages
from pnp_service.protocol import Envelope, ProtocolError, Udi

UDI = Udi("C9300-24P", "V01", "FOC1234X0AB")
ENV = Envelope(UDI, "CiscoPnP-1.0-1-abc")


def children(element) -> list[str]:
    return [etree.QName(child).localname for child in element]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("PID:C9300-24P,VID:V01,SN:FOC1234X0AB", Udi("C9300-24P", "V01", "FOC1234X0AB")),
        ("PID:7206VXR,VID:,SN:34835437", Udi("7206VXR", "", "34835437")),
        ("PID:ISR4451-X/K9,VID:V05,SN:FDO2101X0Y1", Udi("ISR4451-X/K9", "V05", "FDO2101X0Y1")),
        ("PID:C9300-24P, VID:V01 ,SN: FOC1234X0AB ", Udi("C9300-24P", "V01", "FOC1234X0AB")),
        ("SN:ABC,PID:C1111-8P", Udi("C1111-8P", "", "ABC")),
    ],
)
def test_parse_udi(text, expected):
    assert protocol.parse_udi(text) == expected


@pytest.mark.parametrize("serial", ["BAD$SERIAL!", "FDO21:X", "a b", "x" * 65, "-LEADING", "SN\nINFO forged"])
def test_udi_serial_outside_the_yang_pattern_is_refused(serial):
    """Such a serial could be recorded nowhere (the controller rejects it): refused at the edge."""
    with pytest.raises(ProtocolError, match="not a serial number"):
        protocol.parse_udi(f"PID:C9300-24P,VID:V01,SN:{serial}")


def test_serial_pattern_is_the_yangs():
    import glob
    import os
    import re

    from conftest import REPO

    (module,) = glob.glob(os.path.join(REPO, "yang", "pnp-service@*.yang"))
    typedef = open(module).read().split("typedef serial-number", 1)[1]
    assert re.search(r"pattern '([^']*)'", typedef).group(1) == protocol.SERIAL_PATTERN.pattern


def test_udi_without_serial_is_an_error():
    with pytest.raises(ProtocolError, match="no serial"):
        protocol.parse_udi("PID:C9300-24P,VID:V01,SN:")


def test_udi_round_trips():
    assert protocol.parse_udi(str(UDI)) == UDI


def test_parse_work_request():
    request = protocol.parse_work_request(messages.work_request(UDI, "corr-1", "sw1", auth_required=True))
    assert request == protocol.WorkRequest(UDI, "corr-1", "sw1", True, "")


def test_work_request_tolerates_missing_optional_children():
    body = (
        b'<pnp xmlns="urn:cisco:pnp" version="1.0" udi="PID:X,VID:,SN:S1">'
        b'<info xmlns="urn:cisco:pnp:work-info" correlator="c"><extra>1</extra></info></pnp>'
    )
    request = protocol.parse_work_request(body)
    assert (request.udi.serial, request.hostname, request.auth_required) == ("S1", "", False)


@pytest.mark.parametrize(
    "body, message",
    [
        (b"", "empty"),
        (b"<pnp", "malformed"),
        (b'<foo xmlns="urn:cisco:pnp" udi="SN:1"/>', "root element"),
        (b'<pnp xmlns="urn:cisco:pnp" version="1.0"><info xmlns="urn:cisco:pnp:work-info" correlator="c"/></pnp>', "udi"),
        (b'<pnp xmlns="urn:cisco:pnp" udi="SN:1"><info xmlns="urn:cisco:pnp:work-info"/></pnp>', "correlator"),
        (b'<pnp xmlns="urn:cisco:pnp" udi="SN:1"><request xmlns="urn:cisco:pnp:backoff" correlator="c"/></pnp>', "expected work-info"),
        (b'<pnp xmlns="urn:cisco:pnp" udi="SN:1"/>', "exactly one child"),
    ],
)
def test_bad_work_requests_are_rejected_with_a_reason(body, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.parse_work_request(body)


HOSTILE = {
    "billion-laughs": b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
    b'<pnp xmlns="urn:cisco:pnp" udi="SN:1">&lol2;</pnp>',
    "external-entity": b'<?xml version="1.0"?><!DOCTYPE pnp [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
    b'<pnp xmlns="urn:cisco:pnp" udi="SN:&xxe;"/>',
    "parameter-entity": b'<?xml version="1.0"?><!DOCTYPE pnp [<!ENTITY % p SYSTEM "http://127.0.0.1:1/x.dtd"> %p;]><pnp/>',
    "utf16-doctype": '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><pnp/>'.encode("utf-16"),
    "undeclared-entity": b'<pnp xmlns="urn:cisco:pnp" udi="SN:&undeclared;"/>',
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_is_refused(name):
    with pytest.raises(ProtocolError):
        protocol.parse_xml(HOSTILE[name])


def test_deep_nesting_is_refused():
    body = b"<a>" * (protocol.MAX_DEPTH + 5) + b"</a>" * (protocol.MAX_DEPTH + 5)
    with pytest.raises(ProtocolError, match="deeper|malformed"):
        protocol.parse_xml(body)


def test_oversized_message_is_refused():
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.parse_xml(b"<a>" + b"x" * protocol.MAX_MESSAGE_BYTES + b"</a>")


def test_too_many_elements_are_refused():
    with pytest.raises(ProtocolError, match="elements"):
        protocol.parse_xml(b"<a>" + b"<b/>" * (protocol.MAX_ELEMENTS + 1) + b"</a>")


def test_parse_device_info_response_extracts_facts():
    data = messages.device_info(UDI, "c1", platform="C9300-24P", version="17.3.1", hostname="sw", flash_free=1000)
    response = protocol.parse_work_response(data)
    assert response.service == "device-info" and response.success and response.correlator == "c1"
    info = response.device
    assert (info.version, info.platform, info.hostname, info.image_file) == ("17.3.1", "C9300-24P", "sw", "flash:packages.conf")
    assert info.install_mode and info.boot_file_system == "flash:" and info.file_system("flash:").free == 1000


def test_parse_failed_response_keeps_error_info():
    error = protocol.ErrorInfo("ERROR", "PnP Service Error 1806", "packages.conf not supported")
    response = protocol.parse_work_response(messages.response(UDI, "image-install", "c2", False, error))
    assert not response.success
    assert response.error == error


def test_parse_fault():
    fault = protocol.parse_work_response(messages.fault(UDI, "Client", "unknown request"))
    assert isinstance(fault, protocol.Fault)
    assert (fault.code, fault.string) == ("Client", "unknown request")


def test_a_fault_keeps_the_text_of_its_nested_detail():
    nested = messages.fault(UDI, "Client", "copy failed").replace(
        b"<detail></detail>", b"<detail><xsvc><errorCode>1406</errorCode> <message>no space</message></xsvc></detail>")
    fault = protocol.parse_work_response(nested)
    assert isinstance(fault, protocol.Fault) and fault.detail == "1406 no space"


def test_response_with_bad_success_value_is_refused():
    body = b'<pnp xmlns="urn:cisco:pnp" udi="SN:1"><response xmlns="urn:cisco:pnp:cli-exec" correlator="c" success="maybe"/></pnp>'
    with pytest.raises(ProtocolError, match="success"):
        protocol.parse_work_response(body)


def test_cli_exec_output_is_extracted():
    response = protocol.parse_work_response(messages.cli_exec_output(UDI, "c", "show version", "Version 17"))
    assert response.details["output"] == "Version 17"


# --------------------------------------------------------------------------- server messages


def parse(data: bytes):
    assert data.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = etree.fromstring(data)
    assert root.tag == "{urn:cisco:pnp}pnp" and root.get("udi") == str(UDI) and root.get("version") == "1.0"
    (body,) = root
    return root, body


def test_device_info_request_shape():
    _, body = parse(protocol.device_info(ENV))
    assert body.tag == "{urn:cisco:pnp:device-info}request" and body.get("correlator") == ENV.correlator
    assert body[0].tag == "{urn:cisco:pnp:device-info}deviceInfo" and body[0].get("type") == "all"


def test_config_upgrade_request_shape_and_order():
    _, body = parse(protocol.config_upgrade(ENV, "http://h/c.cfg", apply_to="running"))
    ns = "{urn:cisco:pnp:config-upgrade}"
    assert children(body) == ["config", "noReload"]
    config = body[0]
    assert config.get("details") == "all"
    copy = config.find(ns + "copy")
    assert children(copy) == ["source", "applyTo", "abortOnSyntaxFault"]
    assert copy.findtext(f"{ns}source/{ns}location") == "http://h/c.cfg"
    assert copy.findtext(ns + "applyTo") == "running"
    abort = copy.find(ns + "abortOnSyntaxFault")
    assert abort.text is None and len(abort) == 0  # schema: fixed="", presence means abort


def test_config_upgrade_without_abort_sends_no_abort_element():
    _, body = parse(protocol.config_upgrade(ENV, "http://h/c.cfg", abort_on_syntax_fault=False))
    copy = body.find("{urn:cisco:pnp:config-upgrade}config/{urn:cisco:pnp:config-upgrade}copy")
    assert children(copy) == ["source", "applyTo"]


def test_backoff_seconds_are_capped_to_what_the_schema_allows():
    _, body = parse(protocol.backoff(ENV, "later", seconds=10 * 24 * 3600))
    ns = "{urn:cisco:pnp:backoff}"
    after = body[0].find(ns + "callbackAfter")
    assert [after.findtext(ns + u) for u in ("hours", "minutes", "seconds")] == ["47", "59", "59"]


def test_config_upgrade_with_reload_has_reload_as_sibling_of_config():
    _, body = parse(protocol.config_upgrade(ENV, "http://h/c.cfg", reload=protocol.Reload(reason="day0")))
    assert children(body) == ["config", "reload"]
    assert children(body[1]) == ["reason", "delayIn", "user", "saveConfig"]


def test_image_install_request_shape():
    _, body = parse(protocol.image_install(ENV, "http://h/i.bin", "ABCDEF0123456789ABCDEF0123456789"))
    ns = "{urn:cisco:pnp:image-install}"
    assert children(body) == ["image", "reload"]
    copy = body.find(f"{ns}image/{ns}copy")
    assert children(copy) == ["source", "destination"]
    assert children(copy.find(ns + "source")) == ["location", "checksum"]
    assert copy.findtext(f"{ns}source/{ns}checksum") == "abcdef0123456789abcdef0123456789"


def test_cli_exec_and_cli_config_shapes():
    _, body = parse(protocol.cli_exec(ENV, "show version"))
    assert children(body) == ["execCLI"] and body[0].findtext("{urn:cisco:pnp:cli-exec}cmd") == "show version"
    _, body = parse(protocol.cli_config_apply(ENV, ["hostname a", "end"]))
    assert children(body) == ["configApply"] and children(body[0]) == ["config-data"]
    _, body = parse(protocol.cli_config_persist(ENV))
    assert children(body) == ["configPersist"]


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"seconds": 3725}, ["reason", "callbackAfter"]),
        ({"default_minutes": 10}, ["reason", "defaultMinutes"]),
        ({"terminate": True}, ["reason", "terminate"]),
    ],
)
def test_backoff_forms(kwargs, shape):
    _, body = parse(protocol.backoff(ENV, "later", **kwargs))
    assert children(body[0]) == shape
    if "seconds" in kwargs:
        ns = "{urn:cisco:pnp:backoff}"
        after = body[0].find(ns + "callbackAfter")
        assert [after.findtext(ns + u) for u in ("hours", "minutes", "seconds")] == ["1", "2", "5"]


@pytest.mark.parametrize("seconds", [1, 59, 60, 3599, 3600, 7200, 7261, 86399])
def test_a_backoff_calls_back_after_the_seconds_asked_for(seconds):
    _, body = parse(protocol.backoff(ENV, "later", seconds=seconds))
    ns = "{urn:cisco:pnp:backoff}"
    after = body[0].find(ns + "callbackAfter")
    hours, minutes, rest = (int(after.findtext(ns + u)) for u in ("hours", "minutes", "seconds"))
    assert hours * 3600 + minutes * 60 + rest == seconds and minutes < 60 and rest < 60


@pytest.mark.parametrize("kwargs", [{}, {"seconds": 1, "terminate": True}, {"default_minutes": 0}])
def test_backoff_needs_exactly_one_valid_form(kwargs):
    with pytest.raises(ValueError):
        protocol.backoff(ENV, "x", **kwargs)


def test_bye_shape():
    _, body = parse(protocol.bye(ENV))
    assert body.tag == "{urn:cisco:pnp:work-info}info" and body.get("correlator") == ENV.correlator
    assert body.find("{urn:cisco:pnp:work-info}workInfo/{urn:cisco:pnp:work-info}bye") is not None


def test_credentials_go_on_the_envelope():
    root, _ = parse(protocol.device_info(Envelope(UDI, "c", "admin", "s3cret")))
    assert (root.get("usr"), root.get("pwd")) == ("admin", "s3cret")


def test_text_is_escaped_in_server_messages():
    message = messages.parse_server_message(protocol.cli_exec(ENV, "show run | include <a&b>"))
    assert message.find_text("execCLI/cmd") == "show run | include <a&b>"


@pytest.mark.parametrize(
    "udi, correlator",
    [(str(UDI), "CiscoPnP-1.0-1-abc"), ('PID:A&B,VID:"<x>",SN:1', "c&<>\"'\n\t"), ("SN:é", "ü")],
)
@pytest.mark.parametrize(
    "build",
    [
        lambda env: protocol.bye(env),
        lambda env: protocol.backoff(env, "wait & see <now>", seconds=90),
        lambda env: protocol.backoff(env, "provisioned", default_minutes=60),
        lambda env: protocol.backoff(env, "done", terminate=True),
    ],
)
def test_stamped_messages_equal_the_built_ones(build, udi, correlator):
    """The fast path for byes and backoffs yields exactly what building the tree yields."""
    fast = build(Envelope(udi, correlator))
    built = build(Envelope(udi, correlator, "u", "p"))  # credentials take the lxml path
    root = etree.fromstring(built)
    del root.attrib["usr"], root.attrib["pwd"]
    assert fast == etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    assert etree.fromstring(fast).get("udi") == udi and etree.fromstring(fast)[0].get("correlator") == correlator


def test_certificate_install_names_the_trustpool_and_where_to_reconnect():
    _, body = parse(protocol.certificate_install(ENV, "http://192.0.2.9/ca.pem", ntp="192.0.2.1",
                                                 reconnect=("192.0.2.10", 8443)))
    assert body.findtext(".//{*}trustpool/{*}copy/{*}source/{*}location") == "http://192.0.2.9/ca.pem"
    assert body.findtext(".//{*}set/{*}ntp/{*}ip-address") == "192.0.2.1"
    address = body.find(".//{*}reconnect/{*}primary-server/{*}server-address")
    assert (address.findtext("{*}ipv4"), address.findtext("{*}port")) == ("192.0.2.10", "8443")


def test_topology_request_and_response():
    request = etree.fromstring(protocol.topology(Envelope(UDI, "c-7")))
    body = request[0]
    assert body.tag == "{urn:cisco:pnp:topology}request" and body.get("correlator") == "c-7" and len(body) == 0
    uplinks = [messages.Uplink("TenGigabitEthernet1/1/1", "DIST-SW-1.example.com", "GigabitEthernet1/0/48"),
               messages.Uplink("TenGigabitEthernet1/1/2", "dist-sw-2", "Ethernet1/48", platform="N9K-C93180YC-FX")]
    response = protocol.parse_work_response(messages.topology_response(UDI, "c-7", uplinks))
    assert response.service == "topology" and response.success
    assert response.neighbours == (
        protocol.Neighbour("TenGigabitEthernet1/1/1", "dist-sw-1", "GigabitEthernet1/0/48", "cisco C9500-48Y4C"),
        protocol.Neighbour("TenGigabitEthernet1/1/2", "dist-sw-2", "Ethernet1/48", "N9K-C93180YC-FX"),
    )


def test_a_topology_element_without_a_remote_device_or_port_is_skipped():
    message = messages.topology_response(UDI, "c", [messages.Uplink("Te1/1/1", "dist-sw-1", "Gi1/0/48")])
    without_name = message.replace(b"<deviceName>dist-sw-1</deviceName>", b"<deviceName> </deviceName>")
    assert without_name != message
    assert protocol.parse_work_response(without_name).neighbours == ()
    failed = messages.response(UDI, "topology", "c", False, protocol.ErrorInfo("ERROR", "PnP Service Error 1", "no"))
    assert protocol.parse_work_response(failed).neighbours == ()


# --------------------------------------------------------------------------- neighbours (declaring by location)

# The fields the parsers read, in the layout of IOS-XE's `show cdp neighbors detail`: blocks between dashed lines,
# the platform before its capabilities, both ends on one line; an NX-OS neighbour and a phone on an access port.
CDP_DETAIL = (
    "-------------------------\n"
    "Device ID: dist-sw-1.example.com\n"
    "Platform: cisco C9500-48Y4C,  Capabilities: Router Switch IGMP \n"
    "Interface: TenGigabitEthernet1/1/1,  Port ID (outgoing port): GigabitEthernet1/0/48\n"
    "Holdtime : 161 sec\n"
    "\n"
    "-------------------------\n"
    "Device ID: DIST-SW-2(FDO23451ABC)\n"
    "Platform: N9K-C93180YC-FX,  Capabilities: Router Switch \n"
    "Interface: TenGigabitEthernet1/1/2,  Port ID (outgoing port): Ethernet1/48\n"
    "\n"
    "-------------------------\n"
    "Device ID: SEP001122334455\n"
    "Platform: IP Phone 8865,  Capabilities: Host Phone \n"
    "Interface: GigabitEthernet1/0/5,  Port ID (outgoing port): Port 1\n"
    "\n"
    "Total cdp entries displayed : 3\n"
)

# `show lldp neighbors detail`: abbreviated interfaces; the second neighbour's port id is a MAC address.
LLDP_DETAIL = (
    "------------------------------------------------\n"
    "Local Intf: Te1/1/1\n"
    "Chassis id: 70b3.1722.8100\n"
    "Port id: Gi1/0/48\n"
    "Port Description: uplink to access-3\n"
    "System Name: dist-sw-1.example.com\n"
    "\n"
    "------------------------------------------------\n"
    "Local Intf: Te1/1/2\n"
    "Chassis id: 0011.2233.4466\n"
    "Port id: 0011.2233.4467\n"
    "Port Description: GigabitEthernet1/0/47\n"
    "System Name: dist-sw-2\n"
    "\n"
    "Total entries displayed: 2\n"
)


def test_cdp_detail_gives_each_neighbour_with_both_ends_and_the_platform():
    assert parse_cdp_detail(CDP_DETAIL) == [
        Neighbour("TenGigabitEthernet1/1/1", "dist-sw-1", "GigabitEthernet1/0/48", "cisco C9500-48Y4C"),
        Neighbour("TenGigabitEthernet1/1/2", "dist-sw-2", "Ethernet1/48", "N9K-C93180YC-FX"),
        Neighbour("GigabitEthernet1/0/5", "sep001122334455", "Port 1", "IP Phone 8865"),
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
    from pnp_service.simulator import AgentSimulator

    reply, _ = AgentSimulator("http://127.0.0.1:9")._perform(device, None, messages.parse_server_message(request_bytes))
    return protocol.parse_work_response(reply)


def test_the_simulator_tells_its_neighbours_by_topology_and_by_both_cli_commands():
    from pnp_service.simulator import SimulatedDevice

    device = SimulatedDevice("SIM1", neighbors=(("dist-sw-1.example.com", "Gi1/0/48"), ("dist-sw-2", "Gi1/0/48")))
    env = Envelope(device.udi, "c-1")
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
