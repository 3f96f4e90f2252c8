"""From day 0 to managed: the plan of a device handed to a controller, its host key, the controller action, the hooks."""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from lxml import etree

from conftest import SECRET, FakeClock, RunningListener, datastore_xml, open_store
from pnp_service.handoff import HandoffWorker, HookAction, Result
from pnp_service.listener import ListenerSettings
from pnp_service.model import CONTROLLER_NS, NETCONF_NS, Declaration, DeviceRecord, HandOff, Status
from pnp_service.planner import PlanningError, controller_variables, plan
from pnp_service.provisioner import Settings
from pnp_service.simulator import AgentSimulator, SimulatedDevice
from pnp_service.simulator import _ios_key_data
from pnp_service.steps import host_key_from_output
from pnp_service.stores.clixon.handoff import MARK, ControllerAction, pin_host_key
from pnp_service.stores.clixon.netconf import RpcError

KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIH4WxHTSx1JTQ3FEH0o6q7VjJ0/6gK6dtlf3rDp4AWUk controller@lab")
HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOjDmYy4E5h+3Nv7SUbKn+L9aXRoqZ3sGr0dF2hNRDRf"
TEMPLATE = """hostname {{ hostname }}
netconf-yang
username {{ netconf_user }} privilege 15
ip ssh rsa keypair-name pnp-ssh
ip ssh pubkey-chain
 username {{ netconf_user }}
  key-string
{% for line in controller_ssh_key_lines %}
   {{ line }}
{% endfor %}
   exit
"""
MANAGED = ("<serial>{sn}</serial><pid>C9300-24P</pid><hostname>{host}</hostname><config><template>" + TEMPLATE.replace("<", "&lt;")
           + "</template><apply-to>running</apply-to><reload>false</reload></config><controller>{controller}</controller>")


def managed(serial="SN1", **handoff) -> Declaration:
    return Declaration(serial=serial, pid="C9300-24P", hostname="sw1", template=TEMPLATE, apply_to="running",
                       reload=False, handoff=HandOff(**handoff))


def test_a_managed_device_is_planned_to_keep_its_session_read_its_host_key_and_save():
    work = plan(managed(user="admin"), context=controller_variables(KEY))
    assert [(s.id, s.type) for s in work.steps] == [
        ("device-info", "device-info"), ("ssh-keygen", "cli-exec"), ("config-upgrade", "config-upgrade"),
        ("ssh-host-key", "ssh-host-key"), ("save-config", "cli-config")]
    config = work.steps[2].params["config"]
    assert "username admin privilege 15" in config and "   AAAAC3NzaC1lZDI1NTE5AAAAIH4WxHTSx1JTQ3FEH0o6q7VjJ0/6gK6dtlf3rDp4AWUk" in config
    assert work.steps[2].params["reload"] == "false" and work.steps[2].params["apply-to"] == "running"
    unchecked = plan(managed(check_host_key=False), context=controller_variables(KEY))
    assert "ssh-host-key" not in [s.id for s in unchecked.steps] and "ssh-keygen" not in [s.id for s in unchecked.steps]


def test_a_managed_device_that_would_reload_is_a_planning_error():
    with pytest.raises(PlanningError, match="apply-to running and reload false"):
        plan(dataclasses.replace(managed(), reload=True), context=controller_variables(KEY))


def test_without_the_controllers_key_the_template_says_which_variable_is_missing():
    with pytest.raises(PlanningError, match="controller_ssh_key_lines"):
        plan(managed())


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
def test_the_host_key_is_read_from_what_ios_xe_prints(kind):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 2048)
    openssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    assert host_key_from_output(_ios_key_data(openssh)) == openssh
    assert host_key_from_output(f"foo\n{openssh} root@host\n") == openssh
    assert host_key_from_output(f"{openssh}\n") == openssh  # no comment after the key
    assert host_key_from_output("% Key pair was not found") == ""
    assert host_key_from_output("ssh-rsa not-a-key\n") == ""  # only a key goes into known_hosts


def test_the_host_key_step_records_the_key_it_read_and_retries_without_one():
    from pnp_service.protocol import Udi, WorkResponse
    from pnp_service.steps import SshHostKeyStep, Verdict

    step_type, step = SshHostKeyStep(), SshHostKeyStep.plan("show crypto key mypubkey rsa pnp-ssh")

    def answer(output):
        response = WorkResponse(Udi("C9300-24P", "V01", "SN1"), "cli-exec", "c1", True, details={"output": output})
        return step_type.on_response(step, Status(), response)

    read = answer(f"{HOST_KEY} root@sw1\n")
    assert read.verdict == Verdict.ADVANCE and read.facts == {"host_key": HOST_KEY}
    missing = answer("% Key pair was not found")
    assert missing.verdict == Verdict.RETRY and missing.code == "no-host-key" and "show crypto key" in missing.message


# --------------------------------------------------------------------------- the controller action


class FakeController:
    """The bits of the controller a hand-off uses: devices in running, connection-change, conn-state."""

    def __init__(self, conn_state="OPEN", logmsg=""):
        self.devices: dict[str, etree._Element] = {}
        self.conn_state, self.logmsg = conn_state, logmsg
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.refuse_delete = False
        self.locked_rpcs = 0  # connection-change refused this many times: another session holds the candidate

    def session(self, sockpath):
        return FakeSession(self)


class FakeSession:
    def __init__(self, controller):
        self.controller = controller

    def lock(self): pass
    def unlock(self): pass
    def discard_changes(self): pass
    def close(self): pass
    def commit(self): pass

    def edit_config(self, config, default_operation="merge"):
        device = etree.fromstring(config).find(f"{{{CONTROLLER_NS}}}device")
        name = device.findtext(f"{{{CONTROLLER_NS}}}name")
        if device.get(f"{{{NETCONF_NS}}}operation") == "delete":
            if self.controller.refuse_delete:
                raise RpcError("Transaction 7 is ongoing", "operation-failed", "application")
            if name not in self.controller.devices:
                raise RpcError("Data does not exist; cannot delete resource", "data-missing", "application")
            del self.controller.devices[name]
            return
        assert device.get(f"{{{NETCONF_NS}}}operation") == "create"
        if name in self.controller.devices:
            raise RpcError("Data already exists; cannot create new resource", "data-exists", "application")
        self.controller.devices[name] = device

    def get_config(self, source, xpath, namespaces=None):
        name = xpath.split("'")[1]
        data = etree.Element(f"{{{NETCONF_NS}}}data")
        if name in self.controller.devices:
            data.append(etree.fromstring(etree.tostring(self.controller.devices[name])))
        return data

    def rpc(self, body):
        if self.controller.locked_rpcs:
            self.controller.locked_rpcs -= 1
            raise RpcError("Candidate db is locked by user:root with client-id:12", "operation-failed", "application")
        element = etree.fromstring(body)
        opening = element.findtext(f"{{{CONTROLLER_NS}}}operation") == "OPEN"
        (self.controller.opened if opening else self.controller.closed).append(
            element.findtext(f"{{{CONTROLLER_NS}}}device"))
        return element

    def get(self, xpath, namespaces=None):
        data = self.get_config("running", xpath)
        device = data.find(f"{{{CONTROLLER_NS}}}device")
        if device is not None:
            etree.SubElement(device, f"{{{CONTROLLER_NS}}}conn-state").text = self.controller.conn_state
            etree.SubElement(device, f"{{{CONTROLLER_NS}}}logmsg").text = self.controller.logmsg
        return data


def record(serial="SN1", host_key=HOST_KEY, **handoff) -> DeviceRecord:
    status = Status.from_flat(state="provisioned", revision="r1", address="192.0.2.31", host_key=host_key, handoff="pending")
    return DeviceRecord(serial, managed(serial, **handoff), None, status)


def action(controller, tmp_path):
    return ControllerAction("/fake.sock", str(tmp_path / "ssh" / "known_hosts"), controller.session,
                            open_timeout=2, sleep=lambda s: None)


def test_the_device_is_added_its_host_key_pinned_and_it_is_opened(tmp_path):
    controller = FakeController()
    result = action(controller, tmp_path).hand_off(record(user="admin", profile="iosxe"))
    assert result.state == "managed" and result.device == "sw1" and controller.opened == ["sw1"]
    entry = controller.devices["sw1"]
    leaves = {etree.QName(leaf).localname: leaf.text for leaf in entry}
    assert leaves["addr"] == "192.0.2.31" and leaves["user"] == "admin" and leaves["port"] == "830"
    assert leaves["device-profile"] == "iosxe" and leaves["description"] == MARK.format(serial="SN1")
    assert "ssh-stricthostkey" not in leaves
    assert (tmp_path / "ssh" / "known_hosts").read_text() == f"[192.0.2.31]:830 {HOST_KEY}\n"
    assert oct((tmp_path / "ssh" / "known_hosts").stat().st_mode & 0o777) == "0o600"
    assert action(controller, tmp_path).hand_off(record(user="admin")).state == "managed"  # our own entry: fine again


def test_a_connection_change_refused_while_a_status_commit_holds_the_candidate_is_tried_again(tmp_path):
    controller = FakeController()
    controller.locked_rpcs = 3  # seen on the real controller: the listener's own status commit, for milliseconds
    result = action(controller, tmp_path).hand_off(record())
    assert result.state == "managed" and controller.opened == ["sw1"] and controller.locked_rpcs == 0


def test_a_busy_controller_is_never_mistaken_for_refused_data():
    busy = RpcError("Candidate db is locked by user:root with client-id:12", "operation-failed", "application")
    assert busy.busy and not busy.rejects_data
    refused = RpcError("regexp match fail: pattern does not match", "operation-failed", "application")
    assert refused.rejects_data and not refused.busy


def test_an_existing_device_of_that_name_is_never_overwritten(tmp_path):
    controller = FakeController()
    controller.devices["sw1"] = etree.fromstring(
        f'<device xmlns="{CONTROLLER_NS}"><name>sw1</name><addr>192.0.2.99</addr><description>core</description></device>')
    result = action(controller, tmp_path).hand_off(record())
    assert result.state == "failed" and not result.retry and "already exists under /ctrl:devices" in result.message
    assert controller.devices["sw1"].findtext(f"{{{CONTROLLER_NS}}}addr") == "192.0.2.99" and controller.opened == []


def test_a_connection_that_fails_reports_the_controllers_logmsg(tmp_path):
    controller = FakeController("CLOSED", "ssh: connect to host 192.0.2.31 port 830: Connection refused")
    result = action(controller, tmp_path).hand_off(record())
    assert result.state == "failed" and result.retry and "Connection refused" in result.message


def test_what_a_hook_says_is_cleaned_before_it_is_recorded(tmp_path):
    # One control character would make the status unwritable to the controller: the hand-off retried forever.
    result = HookAction("sh -c 'printf \"bad\\007 \\033[2Jend\" >&2; exit 3'").hand_off(record())
    assert result.state == "failed" and "exited 3: bad" in result.message and "end" in result.message
    assert "\x07" not in result.message and "\x1b" not in result.message


def test_an_entry_that_does_not_open_is_withdrawn_so_the_controllers_commits_do_not_wait_for_it(tmp_path):
    # clixon-controller 1.8 holds every later commit in INIT while an enabled device is CLOSED (tests/integration).
    controller = FakeController("CLOSED", "ssh: connect to host 192.0.2.31 port 830: Connection refused")
    result = action(controller, tmp_path).hand_off(record())
    assert "sw1" not in controller.devices and controller.closed == ["sw1"]
    assert result.retry and "withdrawn from /ctrl:devices until the next try" in result.message
    assert action(controller, tmp_path).hand_off(record()).retry and controller.opened == ["sw1", "sw1"]
    controller.refuse_delete = True
    result = action(controller, tmp_path).hand_off(record())
    assert "sw1" in controller.devices and "left enabled under /ctrl:devices" in result.message
    assert "Transaction 7 is ongoing" in result.message


def test_an_entry_that_is_not_ours_is_never_withdrawn(tmp_path):
    controller = FakeController("CLOSED", "Connection refused")
    controller.devices["sw1"] = etree.fromstring(
        f'<device xmlns="{CONTROLLER_NS}"><name>sw1</name><addr>192.0.2.99</addr><description>core</description></device>')
    action(controller, tmp_path).hand_off(record())
    assert "sw1" in controller.devices and controller.closed == []


def test_host_key_checking_off_is_explicit_and_pins_nothing(tmp_path):
    controller = FakeController()
    result = action(controller, tmp_path).hand_off(record(host_key="", check_host_key=False))
    assert result.state == "managed"
    assert controller.devices["sw1"].findtext(f"{{{CONTROLLER_NS}}}ssh-stricthostkey") == "false"
    assert not (tmp_path / "ssh" / "known_hosts").exists()


def test_another_pinned_key_for_that_host_is_not_replaced(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text("[192.0.2.31]:830 ssh-ed25519 AAAAOTHERKEY\n")
    assert "already pins another host key" in pin_host_key(str(path), "192.0.2.31", 830, HOST_KEY)
    assert pin_host_key(str(path), "192.0.2.32", 22, HOST_KEY) == ""
    assert path.read_text().splitlines()[-1] == f"192.0.2.32 {HOST_KEY}"


# --------------------------------------------------------------------------- without a controller: hooks


class Webhook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        Webhook.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_hooks_fire_once_per_device_and_revision_and_never_in_a_poll(tmp_path):
    Webhook.received = []
    web = HTTPServer(("127.0.0.1", 0), Webhook)
    threading.Thread(target=web.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    out = tmp_path / "facts.jsonl"
    hook = f"{sys.executable} -c \"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + chr(10))\""
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN7</serial><pid>C9300-24P</pid><hostname>sw7</hostname>"
                                  "<config><template>hostname {{ hostname }}</template></config>"))
    clock = FakeClock()
    store = open_store(str(path))
    worker = HandoffWorker(store, HookAction(hook, f"http://127.0.0.1:{web.server_port}/pnp"), clock=clock)
    running = RunningListener(store, clock, ListenerSettings(secret=SECRET, provisioning=Settings(hooks=True)))
    running.listener.on_provisioned = worker.notify
    try:
        result = AgentSimulator(running.url, sleep=clock.advance, max_polls=10).run(SimulatedDevice("SN7"))
        assert result.outcome == "configured"
        assert store.load("SN7").status.handoff.state == "pending"  # the poll only noted it
        assert worker.run("SN7") is True and worker.run("SN7") is False and worker.sweep() == 0
    finally:
        running.stop()
        web.shutdown()
    (facts,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert facts["serial"] == "SN7" and facts["hostname"] == "sw7" and facts["address"] == "127.0.0.1"
    assert Webhook.received == [facts]
    status = store.load("SN7").status
    assert status.handoff.state == "managed" and "command, webhook" in status.handoff.message


def test_a_failing_hook_is_retried_later_and_the_one_that_ran_is_not_run_again(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN8</serial><hostname>sw8</hostname><config><template>x</template></config>"))
    store = open_store(str(path))
    from pnp_service.provisioner import Decision, Event
    store.update("SN8", lambda r: Decision(b"", Event.REQUEST, status=Status.from_flat(
        state="provisioned", revision=r.work.revision, handoff="pending", handoff_revision=r.work.revision,
        handoff_next=__import__("pnp_service.model", fromlist=["parse_time"]).parse_time("2000-01-01T00:00:00Z"))))
    runs = tmp_path / "runs"
    clock = FakeClock()
    worker = HandoffWorker(store, HookAction(f"sh -c 'echo x >> {runs}'", "http://127.0.0.1:9/nothing-listens"),
                           clock=clock, retry_base_seconds=30)
    assert worker.run("SN8") is True
    status = store.load("SN8").status
    assert status.handoff.state == "failed" and "--webhook" in status.handoff.message and status.handoff.device == "command"
    assert worker.run("SN8") is False  # not due yet
    clock.advance(31)
    worker.run("SN8")
    assert runs.read_text().count("x") == 1  # the command that ran is not run again


def test_two_workers_never_hand_one_device_off_twice(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN9</serial><hostname>sw9</hostname><config><template>x</template></config>"))
    store_a, store_b = open_store(str(path)), open_store(str(path))
    from pnp_service.model import parse_time
    from pnp_service.provisioner import Decision, Event
    store_a.update("SN9", lambda r: Decision(b"", Event.REQUEST, status=Status.from_flat(
        state="provisioned", revision=r.work.revision, handoff="pending", handoff_revision=r.work.revision,
        handoff_next=parse_time("2000-01-01T00:00:00Z"))))
    calls = []

    class Slow:
        def hand_off(self, record):
            calls.append(record.serial)
            return Result("managed", "ok")

    clock = FakeClock()
    one, two = HandoffWorker(store_a, Slow(), clock=clock), HandoffWorker(store_b, Slow(), clock=clock)
    threads = [threading.Thread(target=w.run, args=("SN9",)) for w in (one, two)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert calls == ["SN9"]


@pytest.mark.parametrize("name", ["sw1", "o'brien", 'say "hi"', "it's \"odd\""])
def test_a_device_name_is_an_xpath_literal_that_selects_only_that_device(name):
    from pnp_service.stores.clixon.handoff import _device_xpath

    root = etree.fromstring(f'<devices xmlns="{CONTROLLER_NS}"><device><name/></device><device><name>x</name></device></devices>')
    root[0][0].text = name
    found = root.getroottree().xpath(_device_xpath(name), namespaces={"ctrl": CONTROLLER_NS})
    assert [d[0].text for d in found] == [name]


def handed_to(controller: str, template: str = "hostname {{ hostname }}") -> str:
    return datastore_xml(f"<serial>SN8</serial><pid>C9300-24P</pid><hostname>sw8</hostname><config><template>{template}"
                         "</template><apply-to>running</apply-to><reload>false</reload></config>"
                         f"<controller><name>{controller}</name></controller>")


def test_a_change_only_to_the_hand_off_hands_the_device_off_again_and_does_not_provision_it_again(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(handed_to("core-1"))
    clock = FakeClock()
    store = open_store(str(path))
    running = RunningListener(store, clock, ListenerSettings(secret=SECRET))
    play = AgentSimulator(running.url, sleep=clock.advance, max_polls=12)
    try:
        assert play.run(SimulatedDevice("SN8", ssh_host_key=HOST_KEY)).outcome == "configured"
        first = store.load("SN8").status
        assert first.state == "provisioned" and first.handoff.state == "pending" and first.steps_revision
        store.update("SN8", lambda record: _managed(record))  # the worker handed it to core-1
        path.write_text(handed_to("core-2"))  # the operator moves it to another controller entry
        work = store.load("SN8").work
        assert work.revision != first.revision and work.steps_revision == first.steps_revision
        again = play.run(SimulatedDevice("SN8", ssh_host_key=HOST_KEY))
        assert [entry.split(":")[0] for entry in again.trace] == ["backoff"], again.trace  # nothing sent: no reload
        status = store.load("SN8").status
        assert status.state == "provisioned" and status.revision == work.revision
        assert status.handoff.state == "pending" and status.handoff.revision == work.revision  # handed off again
        path.write_text(handed_to("core-2", "hostname {{ hostname }}\nbanner motd x"))  # a real change
        changed = play.run(SimulatedDevice("SN8", ssh_host_key=HOST_KEY))
        assert "config-upgrade" in [entry.split(":")[0] for entry in changed.trace]  # provisioned again
    finally:
        running.stop()


def _managed(record: DeviceRecord):
    from pnp_service.stores.base import StatusWrite

    status = record.status
    return StatusWrite(dataclasses.replace(status, handoff=dataclasses.replace(status.handoff, state="managed")))


def test_a_status_recorded_before_steps_revisions_gets_one_at_its_next_poll(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(handed_to("core-1"))
    clock = FakeClock()
    store = open_store(str(path))
    work = store.load("SN8").work
    older = Status(state="provisioned", revision=work.revision)  # what an older version recorded
    store.update("SN8", lambda record: _status_write(older))
    running = RunningListener(store, clock, ListenerSettings(secret=SECRET))
    try:
        AgentSimulator(running.url, sleep=clock.advance, max_polls=3).run(SimulatedDevice("SN8", ssh_host_key=HOST_KEY))
    finally:
        running.stop()
    status = store.load("SN8").status
    assert status.state == "provisioned" and status.steps_revision == work.steps_revision


def _status_write(status):
    from pnp_service.stores.base import StatusWrite

    return StatusWrite(status)
