"""The state graph as data: every row of the transition table is reachable, and does what the row says.

``pnp_service.machine.MOVES`` is the per-device machine; the provisioner only interprets it.  These tests walk it:
agents that poll, answer, fault, lie about their PID, answer from elsewhere and go quiet, against every kind of
record (stranger, stack member, unplannable, plain, SUDI with and without a CA), recording each (stage, case) the
provisioner meets, the reply it sends and the stage it leaves.  Every row must be met; none may be left or broken.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import os
import random
import subprocess
import sys

import pytest

from conftest import REPO
from pnp_service import machine, protocol, provisioner, sudi
from pnp_service.machine import MOVES, VERDICTS, Answer, Poll, Reply, Stage, TransitionError
from pnp_service.model import Declaration, DeviceRecord, HandOff, LocationDeclaration, State, Status, Step, Work
from pnp_service.planner import plan
from pnp_service.provisioner import Contact, Provisioner, Settings
from pnp_service.simulator import messages
from pnp_service.simulator.lab_pki import LabCa
from pnp_service.steps import ImageInstallStep, SimpleStep, StepRegistry, advance

T0 = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)  # the lab certificates are valid from now
PID, OTHER_PID = "C9300-24P", "C9200L-48P"
HOME, ELSEWHERE = "192.0.2.50", "192.0.2.99"


@dataclasses.dataclass
class Visit:
    stage: Stage
    case: Poll | Answer
    reply: str  # the service of the reply
    after: Stage


class Done(SimpleStep):
    """A plugin step type with nothing to do."""

    def is_done(self, step, status):
        return True


class Once(SimpleStep):
    """A plugin step type of one request."""

    pnp_service = "cli-exec"

    def request(self, step, status, ctx):
        return protocol.cli_exec(ctx.envelope, "show version")

    def on_response(self, step, status, response):
        return advance()


class Recording(Provisioner):
    """The provisioner, noting each move it makes (its own check of the row still runs)."""

    def __init__(self, visits: list[Visit], settings: Settings):
        registry = StepRegistry(load_entry_points=False)
        registry.register("already-done", Done())
        registry.register("once", Once())
        super().__init__(settings, registry)
        self.visits = visits

    def _apply(self, case, message):
        before = provisioner._stage(message.record, message.record.status)
        decision = super()._apply(case, message)
        status = decision.status if decision.status is not None else message.record.status
        after = provisioner._stage(message.record, status)
        self.visits.append(Visit(before, case, messages.parse_server_message(decision.reply).service, after))
        return decision


@pytest.fixture(scope="module")
def pki():
    ca, rogue = LabCa.create("Lab"), LabCa.create("Rogue")
    return ca, ca.device("SN1", PID, "ec"), rogue.device("SN1", PID, "ec")


def worlds(pki):
    """Each kind of record a serial can have, with the listener settings that go with it."""
    ca, _, _ = pki
    policy = sudi.Policy(anchors=sudi.load_ca_bundle(ca.bundle()))
    plain = Declaration("SN1", PID, "sw1", "hostname {{ hostname }}\n", image_version="17.9.4",
                        image_url="http://images.invalid/cat9k.bin", image_md5="0" * 32, image_size=1000)
    secured = dataclasses.replace(plain, authentication="sudi")
    moved = dataclasses.replace(plain, handoff=HandOff(name="sw1-new"))
    quick = Settings(max_attempts=2, retry_base_seconds=5, retry_max_seconds=20)
    # a switch declared by where it is plugged in, whose declaration asks for SUDI before it is believed
    at = LocationDeclaration("dist-sw-1", "Gi1/0/48", dataclasses.replace(secured, serial=""))
    located = DeviceRecord("SN1", locations={at.location: ""}, location_declarations={at.location: at})
    return {
        "stranger": (DeviceRecord("SN1"), quick),
        "stack-member": (DeviceRecord("SN1", stacks={"SN7": "STACK1"}), quick),
        "unplannable": (DeviceRecord("SN1", plain, planning_error="'site' is undefined"), quick),
        "plain": (DeviceRecord("SN1", plain, plan(plain)), quick),
        "sudi": (DeviceRecord("SN1", secured, plan(secured)), dataclasses.replace(quick, sudi=policy)),
        "sudi-without-ca": (DeviceRecord("SN1", secured, plan(secured)), quick),
        # work planned by a newer version, with a step type this listener does not know
        "broken-work": (DeviceRecord("SN1", plain, Work("f" * 16, (Step("x", "nonesuch"),))), quick),
        # a plugin step that finds nothing to do, then one that does
        "plugin": (DeviceRecord("SN1", plain, Work("e" * 16, (Step("a", "already-done"), Step("b", "once")))), quick),
        "plugin-done": (DeviceRecord("SN1", plain, Work("d" * 16, (Step("a", "already-done"),))), quick),
        "sudi-plugin-done": (DeviceRecord("SN1", secured, Work("d" * 16, (Step("a", "already-done"),))),
                             dataclasses.replace(quick, sudi=policy)),
        # provisioned, then its declaration changed only where it is handed off
        "handoff-changed": (DeviceRecord("SN1", moved, Work("a" * 16, plan(plain).steps, "b" * 16),
                                         Status(state=State.PROVISIONED, revision="c" * 16, steps_revision="b" * 16)),
                            quick),
        "sudi-location": (located, dataclasses.replace(quick, sudi=policy)),
    }


class Agent:
    """One serial's world: the genuine agent, a stranger claiming its serial, and time, as a store would keep them."""

    def __init__(self, record: DeviceRecord, settings: Settings, visits: list[Visit], pki, rng: random.Random):
        self.record, self.rng = record, rng
        self.provisioner = Recording(visits, settings)
        self.now, self.count = T0, 0
        self.correlator, self.asked, self.challenge = "", "", ""
        _, self.sudi, self.rogue = pki

    # ------------------------------------------------------------------ what the world sends

    def _contact(self, address: str = HOME) -> Contact:
        return Contact(self.now, address, lambda kind, serial, rev, name, bind: f"http://127.0.0.1/{kind}/{name}",
                       file_size=lambda name: 1000)

    def _keep(self, decision) -> None:
        if decision.status is not None:
            self.record = dataclasses.replace(self.record, status=decision.status)
        if decision.unclaimed is not None:
            self.record = dataclasses.replace(self.record, unclaimed=decision.unclaimed)

    def poll(self, pid: str = PID, address: str = HOME) -> None:
        self.count += 1
        correlator = f"c{self.count}"
        request = protocol.WorkRequest(protocol.Udi(pid, "V01", "SN1"), correlator, "Switch",
                                       reloaded=self.rng.random() < 0.15)
        decision = self.provisioner.on_work_request(self.record, request, self._contact(address))
        self._keep(decision)
        sent = messages.parse_server_message(decision.reply)
        if pid == PID and address == HOME and sent.service != "backoff":
            self.correlator, self.asked = correlator, sent.service
            self.challenge = sent.find_text("deviceAuth/challenge-request")

    def respond(self, body: bytes, address: str = HOME) -> None:
        response = protocol.parse_work_response(body)
        self._keep(self.provisioner.on_work_response(self.record, response, self._contact(address)))

    def answer(self, how: str) -> None:
        udi = protocol.Udi(OTHER_PID if how == "as-another-pid" else PID, "V01", "SN1")
        service, correlator = self.asked or "device-info", self.correlator or "c0"
        if how == "stale":
            correlator = "c-stale"
        if how == "unsolicited-proof":
            service = "device-auth"
        if how == "wrong-service":
            service = "config-upgrade" if service != "config-upgrade" else "image-install"
        if how == "backoff-ack":
            body = messages.response(udi, "backoff", correlator)
        elif how == "fault":
            body = messages.fault(udi, "SOAP-ENV:Client", "unparsable request")
        elif service == "device-auth":
            key = self.sudi if how != "forged-proof" else self.rogue
            cert, private = key
            signature, method = messages.sign_challenge(private, self.challenge or "x")
            body = messages.device_auth_response(udi, correlator, cert, signature, method)
        elif service == "topology":
            port = self.rng.choice(["GigabitEthernet1/0/48", "GigabitEthernet1/0/47"])
            body = messages.topology_response(udi, correlator, [messages.Uplink("Te1/1/1", "dist-sw-1", port)])
        elif service == "device-info":
            members = [(1, protocol.Udi(PID, "V01", "SN7"))] if self.rng.random() < 0.5 else []
            version = self.rng.choice(["17.9.4", "17.3.1"])
            body = messages.device_info(udi, correlator, platform=udi.pid, version=version, hostname="s",
                                        members=members)
        elif how == "failure":
            body = messages.response(udi, service, correlator, success=False,
                                     error=protocol.ErrorInfo("ERROR", "1410", "copy failed"))
        else:
            body = messages.response(udi, service, correlator)
        self.respond(body, ELSEWHERE if how == "from-elsewhere" else HOME)

    def step(self) -> None:
        self.now += dt.timedelta(seconds=self.rng.choice([0, 0, 5, 61, 400, 4000]))
        action = self.rng.choices(
            ["poll", "poll-as-another-pid", "poll-from-elsewhere", "poll-from-the-crowd", "answer", "failure", "fault", "stale",
             "wrong-service", "backoff-ack", "forged-proof", "unsolicited-proof", "from-elsewhere", "as-another-pid"],
            weights=[30, 3, 3, 6, 30, 5, 3, 3, 3, 3, 3, 2, 3, 3])[0]
        if action == "poll":
            self.poll()
        elif action == "poll-as-another-pid":
            self.poll(pid=OTHER_PID)
        elif action == "poll-from-elsewhere":
            self.poll(address=ELSEWHERE)
        elif action == "poll-from-the-crowd":  # a branch behind NAT, or a VLAN full of claimants
            self.poll(address=f"192.0.2.{self.rng.randrange(100, 112)}")
        else:
            self.answer(action)


def walk(pki, episodes: int = 40, length: int = 40, seed: int = 20261204) -> list[Visit]:
    visits: list[Visit] = []
    rng = random.Random(seed)
    for name, (record, settings) in worlds(pki).items():
        for _ in range(episodes):
            agent = Agent(record, settings, visits, pki, rng)
            for _ in range(length):
                agent.step()
    return visits


def replies_of(move: machine.Move) -> set[str]:
    return {reply.value for reply in move.replies}


@pytest.fixture(scope="module")
def walked(pki) -> list[Visit]:
    return walk(pki)


def test_every_row_is_walked_and_each_move_keeps_to_its_row(walked):
    visits = walked
    walked = {(visit.stage, visit.case) for visit in visits}
    assert walked == set(MOVES), f"rows never walked: {sorted(map(str, set(MOVES) - walked))}"
    for visit in visits:
        row = MOVES[(visit.stage, visit.case)]
        assert visit.after in row.to, visit
        service = visit.reply if visit.reply in {r.value for r in Reply} else Reply.REQUEST.value
        if visit.reply in (Reply.PROBE.value, Reply.NEIGHBOURS.value) and Reply(visit.reply) not in row.replies:
            service = Reply.REQUEST.value  # device-info or cli-exec as a step's request
        assert service in replies_of(row), visit


def test_every_stage_the_table_may_lead_to_is_reached(walked):
    reached = {(visit.stage, visit.case, visit.after) for visit in walked}
    for (stage, case), row in MOVES.items():
        for after in row.to:
            assert (stage, case, after) in reached, f"{case.name} in {stage} never led to {after}"


def test_the_table_names_each_handler_once_and_every_handler_is_in_it():
    named = {row.handler for row in MOVES.values()} | {row.handler for row in VERDICTS.values()}
    handlers = {name for name, _ in inspect.getmembers(Provisioner, inspect.isfunction)
                if name.startswith(("_poll_", "_answer")) or name in {"_advance", "_phase", "_retry", "_fail", "_refuse"}}
    assert named == handlers
    assert {case for _, case in MOVES} == set(Poll) | set(Answer)
    assert set(VERDICTS) == set(provisioner.Verdict)


def test_every_response_is_answered_with_a_bye_and_every_poll_with_something_else():
    for (_, case), row in MOVES.items():
        assert (row.replies == {Reply.BYE}) == isinstance(case, Answer), case


def test_a_case_the_table_lacks_is_refused_not_guessed(monkeypatch):
    record = DeviceRecord("SN1")
    monkeypatch.delitem(MOVES, (Stage.UNKNOWN, Poll.UNDECLARED))
    request = protocol.WorkRequest(protocol.Udi(PID, "V01", "SN1"), "c1", "Switch")
    with pytest.raises(TransitionError, match="UNDECLARED in stage unknown"):
        Provisioner().on_work_request(record, request, Contact(T0, HOME))


def test_a_handler_that_leaves_the_serial_where_its_row_does_not_lead_is_refused(monkeypatch):
    declaration = Declaration("SN1", PID, "sw1", "hostname {{ hostname }}\n")
    record = DeviceRecord("SN1", declaration, plan(declaration))
    row = MOVES[(Stage.PLANNED, Poll.DUE)]
    monkeypatch.setitem(MOVES, (Stage.PLANNED, Poll.DUE), dataclasses.replace(row, to=frozenset({Stage.ERROR})))
    request = protocol.WorkRequest(protocol.Udi(PID, "V01", "SN1"), "c1", "Switch")
    with pytest.raises(TransitionError, match="DUE in stage planned led to onboarding"):
        Provisioner().on_work_request(record, request, Contact(T0, HOME))


def test_the_diagram_in_the_protocol_page_is_drawn_from_the_table():
    script = os.path.join(REPO, "tools", "state_diagram.py")
    drawn = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True).stdout
    page = open(os.path.join(REPO, "docs", "protocol.md")).read()
    assert drawn.strip() in page, "docs/protocol.md is behind the table: run python tools/state_diagram.py --write"
    for (stage, case), row in MOVES.items():  # the drawing shows every row, and every way out of a stage
        assert f"| {stage.name} | {'poll' if isinstance(case, Poll) else 'answer'} {case.name}: " in drawn
        for after in row.to - {stage}:
            edge = next(line for line in drawn.splitlines() if line.strip().startswith(f"{stage.name} --> {after.name}:"))
            assert case.name in edge.split(":", 1)[1].strip().split(", ")
    for phase, spec in ImageInstallStep.PHASES.items():
        for after in (spec.success, spec.otherwise, spec.failure, spec.no_answer, spec.queue, spec.dequeue,
                      spec.installer_missing, spec.flash_short, spec.expired):
            if after is not None:
                assert f"{phase.name.lower()} --> {after.name.lower()}: " in drawn
