"""Switches declared by where they are plugged in, end to end: a declarations file with a pnp-location, the listener
on the embedded store, and simulated switches reporting their neighbours."""

from __future__ import annotations

import pytest

from conftest import datastore_xml
from pnp_service import validation
from pnp_service.neighbours import Location
from pnp_service.simulator import AgentSimulator, SimulatedDevice

AT_48 = ('<pnp-location xmlns="urn:pnp-service:pnp"><neighbor>dist-sw-1</neighbor><port>Gi1/0/48</port>'
         "<hostname>access-sw-7</hostname><config><template>hostname {{ hostname }}\n</template></config>"
         "</pnp-location>")


def declare(tmp_path, *locations: str, devices: tuple[str, ...] = ()) -> str:
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(*devices).replace("</services>", "".join(locations) + "</services>"))
    return str(path)


def simulator(running, clock) -> AgentSimulator:
    return AgentSimulator(running.url, sleep=clock.advance, max_polls=40)


def test_a_switch_declared_only_by_its_location_provisions_whatever_its_serial(serve, clock, tmp_path):
    running = serve(declare(tmp_path, AT_48))
    switch = SimulatedDevice("FOC9999ANY1", neighbors=(("DIST-SW-1.campus.example.net", "GigabitEthernet1/0/48"),))
    result = simulator(running, clock).run(switch)
    assert result.outcome == "configured", result
    assert "hostname access-sw-7" in switch.config
    record = running.store.load("FOC9999ANY1")
    assert record.declaration.hostname == "access-sw-7" and record.status.state == "provisioned"
    shown = {r.serial: r for r in running.store.snapshot().devices}
    assert shown["FOC9999ANY1"].declaration.hostname == "access-sw-7"  # the binding shows in status

    second = SimulatedDevice("FOC9999ANY2", neighbors=(("dist-sw-1", "Gi1/0/48"),))
    simulator(running, clock).run(second)
    assert second.config is None
    entry = running.store.load("FOC9999ANY2").unclaimed
    assert "FOC9999ANY1" in entry.note and "reset" in entry.note  # refused, visible, says what to do

    assert "freed" in running.store.reset("FOC9999ANY1")
    clock.advance(3600)  # the refused switch's next round of questions
    again = SimulatedDevice("FOC9999ANY2", neighbors=(("dist-sw-1", "Gi1/0/48"),))
    assert simulator(running, clock).run(again).outcome == "configured"


def test_a_switch_whose_agent_does_not_answer_the_topology_service_is_matched_through_the_cli(serve, clock, tmp_path):
    running = serve(declare(tmp_path, AT_48))
    switch = SimulatedDevice("FOC9999CLI1", neighbors=(("dist-sw-1", "Gi1/0/48"),), topology=False)
    result = simulator(running, clock).run(switch)
    assert result.outcome == "configured", result
    assert "hostname access-sw-7" in switch.config


def test_a_switch_elsewhere_stays_unclaimed(serve, clock, tmp_path):
    running = serve(declare(tmp_path, AT_48))
    switch = SimulatedDevice("FOC9999ELS1", neighbors=(("dist-sw-1", "Gi1/0/47"),))
    simulator(running, clock).run(switch)
    assert switch.config is None and running.store.load("FOC9999ELS1").declaration is None


def test_two_declarations_of_one_port_in_different_spellings_are_refused_naming_both(tmp_path):
    same = AT_48.replace("Gi1/0/48", "GigabitEthernet1/0/48").replace("dist-sw-1", "DIST-SW-1")
    with pytest.raises(validation.DeclarationsError, match="same port") as raised:
        validation.read_file(declare(tmp_path, AT_48, same))
    assert "Gi1/0/48" in str(raised.value) and "GigabitEthernet1/0/48" in str(raised.value)


def test_a_location_declaration_reads_like_a_serial_one(tmp_path):
    declared = validation.read_file(declare(tmp_path, AT_48))
    location = declared.locations[Location("dist-sw-1", "GigabitEthernet1/0/48")]
    assert (location.neighbor, location.port) == ("dist-sw-1", "Gi1/0/48")
    assert location.for_serial("FOC1").serial == "FOC1" and location.declaration.hostname == "access-sw-7"


# --------------------------------------------------------------------------- a location that asks for SUDI

AT_48_SUDI = AT_48.replace("</config>", "</config><authentication>sudi</authentication>")


@pytest.fixture(scope="module")
def lab_ca():
    from pnp_service.simulator.lab_pki import LabCa

    return LabCa.create("Lab"), LabCa.create("Rogue")


def sudi_switch(ca, serial: str) -> SimulatedDevice:
    cert, key = ca.device(serial, "C9300-24P")
    return SimulatedDevice(serial, neighbors=(("dist-sw-1", "Gi1/0/48"),), sudi_cert=cert, sudi_key=key)


def test_a_location_that_asks_for_sudi_believes_a_switch_only_once_it_proves_a_genuine_sudi(serve, clock, tmp_path,
                                                                                          lab_ca):
    from pnp_service import sudi

    genuine_ca, rogue_ca = lab_ca
    running = serve(declare(tmp_path, AT_48_SUDI), sudi=sudi.Policy(anchors=sudi.load_ca_bundle(genuine_ca.bundle())))

    impostor = sudi_switch(rogue_ca, "FOC9999FAKE")  # names the right neighbour, proves nothing
    simulator(running, clock).run(impostor)
    assert impostor.config is None
    entry = running.store.load("FOC9999FAKE").unclaimed
    assert running.store.load("FOC9999FAKE").declaration is None  # not bound: the location is still free
    assert "refused" in entry.note and "dist-sw-1 GigabitEthernet1/0/48" in entry.note
    assert not entry.challenge and not entry.probe  # single use, and the round is over

    silent = SimulatedDevice("FOC9999NONE", neighbors=(("dist-sw-1", "Gi1/0/48"),))  # no SUDI at all
    simulator(running, clock).run(silent)
    assert silent.config is None and running.store.load("FOC9999NONE").declaration is None

    genuine = sudi_switch(genuine_ca, "FOC9999GEN1")
    result = simulator(running, clock).run(genuine)
    assert result.outcome == "configured", result
    assert "hostname access-sw-7" in genuine.config
    record = running.store.load("FOC9999GEN1")
    assert record.declaration.located == ("dist-sw-1", "Gi1/0/48") and record.status.sudi.proven_at is not None


def test_a_location_that_asks_for_sudi_binds_nothing_on_a_listener_without_a_sudi_ca(serve, clock, tmp_path, lab_ca):
    running = serve(declare(tmp_path, AT_48_SUDI))
    switch = sudi_switch(lab_ca[0], "FOC9999NOCA")
    simulator(running, clock).run(switch)
    assert switch.config is None and running.store.load("FOC9999NOCA").declaration is None
    assert "--sudi-ca" in running.store.load("FOC9999NOCA").unclaimed.note
