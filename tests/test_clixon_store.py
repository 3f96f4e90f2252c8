"""The Clixon store without a controller: a fake NETCONF session stands in for the socket."""

from __future__ import annotations

import pytest
from lxml import etree

from pnp_service import model
from pnp_service.model import Status, Unclaimed
from pnp_service.planner import plan
from pnp_service.provisioner import Decision
from pnp_service.stores.base import StoreUnavailable
from pnp_service.stores.clixon import NETCONF_NS, ClixonRpcError, ClixonStore, status_edit

PNP = model.PNP_NS


class FakeController:
    """Running datastore of a controller, as far as the store uses it."""

    def __init__(self):
        declaration = model.Declaration(serial="SN1", pid="C9300-24P", hostname="sw1", template="hostname {{ hostname }}\nend\n")
        work = plan(declaration)
        self.running = etree.fromstring(
            f'<data xmlns="{NETCONF_NS}"><services xmlns="{model.CONTROLLER_NS}">'
            f'<pnp-device xmlns="{PNP}"><serial>SN1</serial><pid>C9300-24P</pid></pnp-device></services>'
            f'<pnp xmlns="{PNP}"/></data>'
        )
        self.running.find(f"{{{PNP}}}pnp").append(model.work_to_xml("SN1", work))
        self.up = True
        self.candidate_modified = False  # another session's uncommitted edits
        self.gets = 0
        self.commits = 0

    def session(self, sockpath):
        if not self.up:
            raise StoreUnavailable("controller socket: connection refused")
        return FakeSession(self)


class FakeSession:
    def __init__(self, controller: FakeController):
        self.controller = controller
        self.edit = None

    def _alive(self):
        if not self.controller.up:
            raise StoreUnavailable("controller connection lost")

    def get_config(self, source, xpath, namespaces):
        self._alive()
        self.controller.gets += 1
        return etree.fromstring(etree.tostring(self.controller.running))

    def lock(self):
        self._alive()
        if self.controller.candidate_modified:
            raise ClixonRpcError("Operation failed, candidate has already been modified")

    def edit_config(self, config):
        self._alive()
        self.edit = etree.fromstring(config)

    def commit(self):
        self._alive()
        pnp = self.controller.running.find(f"{{{PNP}}}pnp")
        for device in self.edit.iterfind(f"{{{PNP}}}device"):
            serial = device.findtext(f"{{{PNP}}}serial")
            target = next((d for d in pnp.iterfind(f"{{{PNP}}}device") if d.findtext(f"{{{PNP}}}serial") == serial), None)
            if target is None:
                target = etree.SubElement(pnp, f"{{{PNP}}}device")
                etree.SubElement(target, f"{{{PNP}}}serial").text = serial
            for old in target.findall(f"{{{PNP}}}status"):
                target.remove(old)
            target.append(device.find(f"{{{PNP}}}status"))
        for entry in self.edit.iterfind(f"{{{PNP}}}unclaimed"):
            serial = entry.findtext(f"{{{PNP}}}serial")
            for old in [u for u in pnp.iterfind(f"{{{PNP}}}unclaimed") if u.findtext(f"{{{PNP}}}serial") == serial]:
                pnp.remove(old)
            if entry.get(f"{{{NETCONF_NS}}}operation") != "remove":
                pnp.append(entry)
        self.controller.commits += 1

    def discard_changes(self):
        pass

    def unlock(self):
        pass

    def close(self):
        pass


def change(status=None, unclaimed=None):
    return lambda record: Decision(b"", "test", status=status, unclaimed=unclaimed)


@pytest.fixture
def controller():
    return FakeController()


@pytest.fixture
def open_store(controller, tmp_path):
    def make():
        return ClixonStore("/fake.sock", journal_path=str(tmp_path / "journal"), session_factory=controller.session, start_threads=False)

    return make


def running_status(controller, serial):
    for device in controller.running.iter(f"{{{PNP}}}device"):
        if device.findtext(f"{{{PNP}}}serial") == serial:
            return model.status_from_xml(device.find(f"{{{PNP}}}status"))
    return None


def test_reads_declarations_and_work_from_running(open_store):
    record = open_store().load("SN1")
    assert record.declaration.pid == "C9300-24P"
    assert record.work.steps[-1].params["config"] == "hostname sw1\nend\n"  # newlines intact


def test_polls_cost_no_round_trip(open_store, controller):
    store = open_store()
    gets = controller.gets
    for _ in range(50):
        store.load("SN1")
        store.update("SN1", change())
    assert controller.gets == gets


def test_write_is_journaled_before_commit_then_committed(open_store, controller, tmp_path):
    store = open_store()
    store.update("SN1", change(status=Status(state="onboarding", step="device-info", correlator="c1")))
    assert "c1" in (tmp_path / "journal").read_text()
    assert store.load("SN1").status.correlator == "c1"  # our own write is visible at once
    assert running_status(controller, "SN1") is None
    assert store.flush() is True
    assert running_status(controller, "SN1").correlator == "c1"
    assert (tmp_path / "journal").read_text() == ""


def test_denied_lock_keeps_writes_until_it_is_granted(open_store, controller):
    store = open_store()
    controller.candidate_modified = True
    store.update("SN1", change(status=Status(state="onboarding", attempts=1)))
    assert store.flush() is False and controller.commits == 0
    assert "candidate has already been modified" in store.last_error
    controller.candidate_modified = False
    assert store.flush() is True
    assert running_status(controller, "SN1").attempts == 1 and store.last_error == ""


def test_restart_replays_the_journal(open_store, controller):
    store = open_store()
    controller.candidate_modified = True
    store.update("SN1", change(status=Status(state="onboarding", attempts=2)))
    store.update("NEW1", change(unclaimed=Unclaimed("NEW1", pid="C9200L")))
    assert store.flush() is False
    del store  # the listener dies here
    controller.candidate_modified = False
    again = open_store()
    assert again.load("SN1").status.attempts == 2  # still served before it is committed
    assert again.load("NEW1").unclaimed.pid == "C9200L"
    assert again.flush() is True
    assert running_status(controller, "SN1").attempts == 2


def test_torn_journal_line_is_skipped(open_store, tmp_path):
    store = open_store()
    store.update("SN1", change(status=Status(state="onboarding", attempts=3)))
    with open(tmp_path / "journal", "a") as handle:
        handle.write('{"kind": "status", "serial": "SN1", "val')  # crash mid-append
    assert open_store().load("SN1").status.attempts == 3


def test_controller_down_serves_the_last_copy_and_keeps_writes(open_store, controller):
    store = open_store()
    controller.up = False
    with pytest.raises(StoreUnavailable):
        store.refresh()
    assert store.load("SN1").work is not None
    store.update("SN1", change(status=Status(state="onboarding", attempts=1)))
    assert store.flush() is False
    controller.up = True
    store.refresh()
    assert store.flush() is True and running_status(controller, "SN1").attempts == 1


def test_newer_write_during_a_commit_is_not_lost(open_store, controller):
    store = open_store()
    store.update("SN1", change(status=Status(state="onboarding", attempts=1)))
    original_commit = FakeSession.commit

    def commit_with_a_racing_poll(session):
        original_commit(session)
        store.update("SN1", change(status=Status(state="onboarding", attempts=2)))

    FakeSession.commit = commit_with_a_racing_poll
    try:
        assert store.flush() is False  # the newer write is still pending
    finally:
        FakeSession.commit = original_commit
    assert store.load("SN1").status.attempts == 2
    assert store.flush() is True and running_status(controller, "SN1").attempts == 2


def test_claimed_device_leaves_unclaimed(open_store, controller):
    store = open_store()
    store.update("SN1", change(unclaimed=Unclaimed("SN1")))
    store.flush()
    store.update("SN1", change(status=Status(state="onboarding")))
    assert store.load("SN1").unclaimed is None
    store.flush()
    assert not [u for u in controller.running.iter(f"{{{PNP}}}unclaimed")]


def test_status_edit_shape():
    edit = etree.fromstring(status_edit(type("P", (), {"status": {"S1": Status(state="error", error_code="x")}, "unclaimed": {}})()))
    status = edit.find(f"{{{PNP}}}device/{{{PNP}}}status")
    assert status.get(f"{{{NETCONF_NS}}}operation") == "replace"
    assert edit.find(f"{{{PNP}}}unclaimed").get(f"{{{NETCONF_NS}}}operation") == "remove"


def test_missing_pyapi_is_a_clear_error(monkeypatch):
    import builtins

    from pnp_service.stores import clixon
    from pnp_service.stores.base import StoreError

    real_import = builtins.__import__

    def no_clixon(name, *args, **kwargs):
        if name.startswith("clixon"):
            raise ImportError("No module named 'clixon'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_clixon)
    with pytest.raises(StoreError, match="clixon-pyapi is not installed"):
        clixon.ClixonSession("/nowhere.sock")


def test_two_listeners_on_one_controller_need_no_sticky_sessions(controller, tmp_path):
    """A device's request served by one listener and its response by another: the second reloads and advances."""
    from conftest import SECRET
    from pnp_service import protocol
    from pnp_service.simulator import messages
    from pnp_service.listener import Listener, ListenerSettings

    def listener(name):
        store = ClixonStore("/fake.sock", journal_path=str(tmp_path / name), session_factory=controller.session, start_threads=False)
        return store, Listener(store, ListenerSettings(secret=SECRET))

    store_a, listener_a = listener("a")
    store_b, listener_b = listener("b")  # its copy of running predates what A writes
    udi = protocol.Udi("C9300-24P", "V01", "SN1")
    reply = listener_a.work_request(messages.work_request(udi, "c1"), "192.0.2.9", "http://pnp/")
    assert messages.parse_server_message(reply.body).service == "device-info"
    assert store_a.flush() is True
    info = messages.device_info(udi, "c1", platform="C9300-24P", version="17", hostname="h", flash_free=1)
    reply = listener_b.work_response(info, "192.0.2.9", "http://pnp/")
    assert messages.parse_server_message(reply.body).service == "bye"
    assert store_b.load("SN1").status.step == "config-upgrade"


def test_reload_ignores_serials_that_are_not_serials(open_store, controller):
    store = open_store()
    gets = controller.gets
    store.reload("x'] | /ctrl:devices | /pnp:pnp[x='")
    assert controller.gets == gets


def test_read_only_store_never_touches_the_listeners_journal(open_store, controller, tmp_path):
    from pnp_service.stores.base import StoreError

    listener_store = open_store()
    controller.candidate_modified = True
    listener_store.update("SN1", change(status=Status(state="onboarding", attempts=5)))
    controller.candidate_modified = False
    viewer = ClixonStore("/fake.sock", journal_path=str(tmp_path / "journal"), session_factory=controller.session, read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        viewer.update("SN1", change(status=Status(state="error")))
    viewer.close()
    assert controller.commits == 0 and "attempts" in (tmp_path / "journal").read_text()
