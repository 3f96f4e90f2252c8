"""Switches declared by where they are plugged in, end to end: a declarations file with a pnp-location, the listener
on the embedded store, and simulated switches reporting their neighbours."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from lxml import etree

from conftest import datastore_xml
from pnp_service import protocol, sudi, validation
from pnp_service.model import DeviceRecord, location_from_xml
from pnp_service.neighbours import Location
from pnp_service.provisioner import Contact, Provisioner, Settings
from pnp_service.simulator import AgentSimulator, SimulatedDevice, messages
from pnp_service.simulator.lab_pki import LabCa

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
    return LabCa.create("Lab"), LabCa.create("Rogue")


def sudi_switch(ca, serial: str) -> SimulatedDevice:
    cert, key = ca.device(serial, "C9300-24P")
    return SimulatedDevice(serial, neighbors=(("dist-sw-1", "Gi1/0/48"),), sudi_cert=cert, sudi_key=key)


def test_a_location_that_asks_for_sudi_believes_a_switch_only_once_it_proves_a_genuine_sudi(serve, clock, tmp_path,
                                                                                          lab_ca):
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


class ProvingStranger:
    """One stranger found at a SUDI location, decided by the provisioner alone (the record kept as a store would)."""

    def __init__(self, ca, serial: str = "FOC9999PRV1"):
        location = location_from_xml(etree.fromstring(AT_48_SUDI))
        at = location.location
        self.record = DeviceRecord(serial, locations={at: ""}, location_declarations={at: location})
        self.provisioner = Provisioner(Settings(sudi=sudi.Policy(anchors=sudi.load_ca_bundle(ca.bundle()))))
        self.now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.udi = protocol.Udi("C9300-24P", "V01", serial)
        self.count = 0

    def keep(self, decision):
        if decision.unclaimed is not None:
            self.record = dataclasses.replace(self.record, unclaimed=decision.unclaimed)
        return decision

    def poll(self, address: str = "127.0.0.5"):
        self.count += 1
        request = protocol.WorkRequest(self.udi, f"c{self.count}", "Switch")
        return self.keep(self.provisioner.on_work_request(self.record, request, Contact(self.now, address)))

    def respond(self, body: bytes, address: str = "127.0.0.5"):
        response = protocol.parse_work_response(body)
        return self.keep(self.provisioner.on_work_response(self.record, response, Contact(self.now, address)))

    def found_there(self):
        asked = messages.parse_server_message(self.poll().reply)
        assert asked.service == "topology"
        uplink = messages.Uplink("Te1/1/1", "dist-sw-1", "GigabitEthernet1/0/48")
        decision = self.respond(messages.topology_response(self.udi, asked.correlator, [uplink]))
        assert decision.event == "location-must-prove" and decision.located_at is None

    def proof(self, key, challenge: str, correlator: str) -> bytes:
        cert, private = key
        signature, method = messages.sign_challenge(private, challenge)
        return messages.device_auth_response(self.udi, correlator, cert, signature, method)


def challenge_of(reply: bytes) -> tuple[str, str]:
    sent = messages.parse_server_message(reply)
    assert sent.service == "device-auth", sent.service
    return sent.find_text("deviceAuth/challenge-request"), sent.correlator


def test_a_proof_from_another_address_is_ignored_and_leaves_the_challenge_to_the_switch_it_was_sent_to(lab_ca):
    stranger = ProvingStranger(lab_ca[0])
    stranger.found_there()
    challenge, correlator = challenge_of(stranger.poll().reply)
    key = lab_ca[0].device("FOC9999PRV1", "C9300-24P")
    ignored = stranger.respond(stranger.proof(key, challenge, correlator), address="127.0.0.66")
    assert ignored.event == "stale" and ignored.located_at is None and not ignored.changes
    accepted = stranger.respond(stranger.proof(key, challenge, correlator))
    assert accepted.event == "located" and str(accepted.located_at) == "dist-sw-1 GigabitEthernet1/0/48"


def test_an_expired_challenge_binds_nothing_and_ends_the_round(lab_ca):
    stranger = ProvingStranger(lab_ca[0])
    stranger.found_there()
    challenge, correlator = challenge_of(stranger.poll().reply)
    stranger.now += dt.timedelta(seconds=301)  # the policy's challenge lives 300 s
    refused = stranger.respond(stranger.proof(lab_ca[0].device("FOC9999PRV1", "C9300-24P"), challenge, correlator))
    assert refused.event == "sudi-refused" and refused.located_at is None
    assert "expired" in refused.unclaimed.note and not refused.unclaimed.probe and not refused.unclaimed.challenge
    again = stranger.poll()  # the round is over (it began 301 s ago): where it is plugged in is asked anew
    assert again.event == "probe" and b"device-auth" not in again.reply


def test_a_second_address_waits_while_the_challenge_is_young_then_gets_one_of_its_own(lab_ca):
    stranger = ProvingStranger(lab_ca[0])
    stranger.found_there()
    first, _ = challenge_of(stranger.poll().reply)
    held = stranger.poll(address="127.0.0.77")
    assert held.event == "sudi-held-off" and held.unclaimed is None  # nothing written for the newcomer
    assert stranger.record.unclaimed.challenge == first
    stranger.now += dt.timedelta(seconds=61)
    second, _ = challenge_of(stranger.poll(address="127.0.0.77").reply)
    assert second != first and stranger.record.unclaimed.challenge_address == "127.0.0.77"


def test_a_forged_proof_is_refused_and_the_stranger_is_not_challenged_again_in_that_round(lab_ca):
    stranger = ProvingStranger(lab_ca[0])
    stranger.found_there()
    challenge, correlator = challenge_of(stranger.poll().reply)
    forged = stranger.respond(stranger.proof(lab_ca[1].device("FOC9999PRV1", "C9300-24P"), challenge, correlator))
    assert forged.event == "sudi-refused" and forged.located_at is None and "refused" in forged.unclaimed.note
    assert stranger.poll().event == "unclaimed"  # a backoff until the next round, no second challenge
