"""The Clixon store without a controller: a fake NETCONF session that behaves like Clixon where it matters."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import socket
import threading
import time

import pytest
from lxml import etree

from pnp_service import model, protocol
from pnp_service.model import NETCONF_NS, Status, Unclaimed
from pnp_service.provisioner import Decision, Event
from pnp_service.simulator import messages
from pnp_service.stores.base import Change, StoreError, StoreUnavailable, UnknownSerial
from fake_controller import FakeController, FakeSession, declare, p
from pnp_service.stores.clixon import ClixonStore, ControllerUnavailable, status_edit
from pnp_service.stores.clixon.store import FLUSH_PACE, view_from_reply

PNP = model.PNP_NS


def change(status=None, unclaimed=None):
    return lambda record: Decision(b"", Event.REQUEST, status=status, unclaimed=unclaimed)


@pytest.fixture
def controller():
    return FakeController()


@pytest.fixture
def journal(tmp_path):
    return str(tmp_path / "journal")


@pytest.fixture
def open_store(controller, journal):
    opened = []

    def make(**kwargs):
        store = ClixonStore("/fake.sock", journal_path=journal, session_factory=controller.session, start_threads=False, **kwargs)
        opened.append(store)
        return store

    return make


def test_reads_declarations_and_work_from_running(open_store):
    record = open_store().load("SN1")
    assert record.declaration.pid == "C9300-24P"
    assert record.work.steps[-1].params["config"] == "hostname sw1\nend\n"  # newlines intact


def test_the_copy_holds_records_built_element_by_element(controller):
    data = b"<rpc-reply>" + etree.tostring(controller.running) + b"</rpc-reply>"
    view = view_from_reply(data)
    assert set(view.declarations) == {"SN1"} and set(view.work) == {"SN1"} and view.status == {}


def test_the_copy_keeps_equal_texts_once(controller):
    """10,000 devices share a platform, a template and step names: the copy holds each such text once."""
    declare(controller, "SN2", "sw2")
    data = b"<rpc-reply>" + etree.tostring(controller.running) + b"</rpc-reply>"
    view = view_from_reply(data)
    first, second = view.declarations["SN1"], view.declarations["SN2"]
    assert first.pid == second.pid and first.pid is second.pid
    assert view.work["SN1"].steps[0].type is view.work["SN2"].steps[0].type
    assert first.hostname != second.hostname  # what differs stays apart
    assert model._shared_texts.get() is None  # the pool went with the refresh


def test_polls_cost_no_round_trip(open_store, controller):
    store = open_store()
    gets = controller.gets
    for _ in range(50):
        store.load("SN1")
        store.update("SN1", change())
    assert controller.gets == gets


def test_write_is_journaled_before_commit_then_committed(open_store, controller, journal):
    store = open_store()
    store.update("SN1", change(status=Status(state="onboarding", step="device-info", correlator="c1")))
    assert "c1" in open(journal).read()
    assert store.load("SN1").status.correlator == "c1"  # our own write is visible at once
    assert controller.status("SN1") is None
    assert store.flush() is True
    assert controller.status("SN1").correlator == "c1"
    assert open(journal).read() == ""


def test_denied_lock_keeps_writes_until_it_is_granted(open_store, controller):
    store = open_store()
    controller.candidate_modified = True
    store.update("SN1", change(status=Status(state="onboarding", attempts=1)))
    assert store.flush() is False and controller.commits == 0
    assert "candidate has already been modified" in store.last_error
    assert any("candidate" in problem for problem in store.problems())
    controller.candidate_modified = False
    assert store.flush() is True
    assert controller.status("SN1").attempts == 1 and store.last_error == ""


def crash(store) -> None:
    """What the kernel does when a listener's process dies: its locks go, nothing is flushed or closed."""
    os.close(store._journal._liveness)
    store._journal._liveness = None


def test_restart_replays_the_journal(open_store, controller):
    store = open_store()
    controller.candidate_modified = True
    store.update("SN1", change(status=Status(state="onboarding", attempts=2)))
    store.update("NEW1", change(unclaimed=Unclaimed("NEW1", pid="C9200L")))
    assert store.flush() is False
    crash(store)  # the listener dies here
    controller.candidate_modified = False
    again = open_store()
    assert again.load("SN1").status.attempts == 2  # still served before it is committed
    assert again.load("NEW1").unclaimed.pid == "C9200L"
    assert again.flush() is True
    assert controller.status("SN1").attempts == 2 and controller.unclaimed() == ["NEW1"]


def test_listeners_sharing_a_journal_keep_each_others_writes_and_adopt_only_the_dead_ones(journal):
    # gunicorn workers, or an HTTP and an HTTPS listener started in one folder, share the default journal.
    from pnp_service.stores.clixon.journal import Journal

    first, second = Journal(journal), Journal(journal)
    assert first.replay() == {} and second.replay() == {}
    first.append([Change("SN1", status=Status(state="onboarding", attempts=1))])
    second.append([Change("SN2", unclaimed=Unclaimed("SN2", pid="C9200L"))])
    first.rewrite({})  # first committed SN1: the line of second, still waiting, stays on disk
    assert "SN2" in open(journal).read() and "SN1" not in open(journal).read()
    assert Journal(journal).replay() == {}  # a third listener starting leaves a living one's lines alone
    second.close()  # or died: its lines are the next starter's
    with open(journal, "a") as handle:  # and a line of an older version, which named no owner
        handle.write('{"kind":"status","serial":"SN3","value":{"state":"error"}}\n')
    adopted = Journal(journal).replay()
    assert sorted(adopted) == ["SN2", "SN3"] and adopted["SN2"].unclaimed.pid == "C9200L"
    first.rewrite({})
    assert "SN2" in open(journal).read()  # now the adopter's, kept by first's rewrite too


def test_a_journal_line_names_its_owner_whatever_a_device_sent(journal):
    # A rewrite reads each line's owner from its end, unparsed: text a device sent must not pass for the key.
    from pnp_service.stores.clixon.journal import Journal

    first, second = Journal(journal), Journal(journal)
    first.replay(), second.replay()
    forged = f'sw","owner":"{first.owner}"}}'
    second.append([Change("SN2", unclaimed=Unclaimed("SN2", hostname=forged))])
    first.rewrite({})  # drops its own lines only
    assert forged in json.loads(open(journal).read())["value"]["hostname"]
    second.rewrite({})
    assert open(journal).read() == ""


def test_torn_journal_line_is_skipped(open_store, journal):
    store = open_store()
    store.update("SN1", change(status=Status(state="onboarding", attempts=3)))
    with open(journal, "a") as handle:
        handle.write('{"kind": "status", "serial": "SN1", "val')  # crash mid-append
    crash(store)
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
    assert store.flush() is True and controller.status("SN1").attempts == 1


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
    assert store.flush() is True and controller.status("SN1").attempts == 2


def test_a_refresh_fetched_before_a_commit_does_not_undo_it(open_store, controller):
    store = open_store()
    store.update("SN1", change(status=Status(state="onboarding", attempts=1)))
    stale = etree.fromstring(etree.tostring(controller.running))  # running as a slow refresh saw it
    original = FakeSession.get_config_raw

    def slow_get(session, *args):
        data = b"<rpc-reply>" + etree.tostring(stale) + b"</rpc-reply>"
        store.flush()  # the flusher commits while the refresh is on its way
        return data

    FakeSession.get_config_raw = slow_get
    try:
        store.refresh()
    finally:
        FakeSession.get_config_raw = original
    assert store.load("SN1").status.attempts == 1


def test_claimed_device_leaves_unclaimed_and_unclaimed_drops_an_old_status(open_store, controller):
    store = open_store()
    store.update("SN1", change(unclaimed=Unclaimed("SN1")))
    store.flush()
    store.update("SN1", change(status=Status(state="onboarding")))
    assert store.load("SN1").unclaimed is None
    store.flush()
    assert controller.unclaimed() == []
    store.update("SN1", change(unclaimed=Unclaimed("SN1", pid="X")))
    store.flush()
    assert controller.status("SN1") is None and controller.unclaimed() == ["SN1"]


def test_a_stranger_leaves_no_empty_device_entry_in_the_operators_tree(open_store, controller):
    """An unclaimed write removes a status only where there is one: a merge would create /pnp/device[serial]."""
    store = open_store()
    for serial in ("STRANGER1", "STRANGER2"):
        store.update(serial, change(unclaimed=Unclaimed(serial, pid="C9200L")))
    store.update("SN1", change(status=Status.from_flat(state="error", error_code="x")))
    store.flush()
    pnp = controller.running.find(p("pnp"))
    assert [d.findtext(p("serial")) for d in pnp.iterfind(p("device"))] == ["SN1"]
    store.update("SN1", change(unclaimed=Unclaimed("SN1")))  # this one has a status: it goes
    store.flush()
    assert controller.status("SN1") is None and sorted(controller.unclaimed()) == ["SN1", "STRANGER1", "STRANGER2"]


def test_status_edit_shape():
    edit = etree.fromstring(status_edit([Change("S1", status=Status.from_flat(state="error", error_code="x")),
                                         Change("S2", unclaimed=Unclaimed("S2"))]))
    status = edit.find(f"{p('device')}/{p('status')}")
    assert status.get(f"{{{NETCONF_NS}}}operation") == "replace"
    assert edit.find(p("unclaimed")).get(f"{{{NETCONF_NS}}}operation") == "remove"
    removed = [d for d in edit.iterfind(p("device")) if d.findtext(p("serial")) == "S2"]
    assert removed[0].find(p("status")).get(f"{{{NETCONF_NS}}}operation") == "remove"


# --------------------------------------------------------------------------- one bad record blocks nothing


def test_a_refused_change_is_set_aside_and_every_other_change_is_committed(open_store, controller, journal, caplog):
    store = open_store()
    for number in range(7):
        store.update(f"OK{number}", change(unclaimed=Unclaimed(f"OK{number}", pid="C9200L")))
    store.update("SN1", change(status=unchecked(Status(), state="bogus")))  # the controller's enumeration refuses it
    store.update("OK7", change(unclaimed=Unclaimed("OK7")))
    with caplog.at_level(logging.ERROR):
        assert store.flush() is True
    assert sorted(controller.unclaimed()) == [f"OK{n}" for n in range(8)]
    assert controller.status("SN1") is None
    assert 'event=write-refused serial="SN1"' in caplog.text and "does not match enumeration" in caplog.text
    (kept,) = [json.loads(line) for line in open(journal + ".rejected")]
    assert kept["serial"] == "SN1" and "enumeration" in kept["reason"]
    assert open(journal).read() == "" and store.problems()
    assert store.flush() is True  # nothing is retried forever


def test_a_poisoned_journal_from_an_older_version_heals_at_start(open_store, controller, journal, caplog):
    lines = [
        {"kind": "unclaimed", "serial": "BAD$SERIAL!", "value": {"serial": "BAD$SERIAL!", "pid": "X"}},
        {"kind": "status", "serial": "SN1", "value": {"state": "provisioned", "revision": "r"}},
    ]
    with open(journal, "w") as handle:
        handle.writelines(json.dumps(line) + "\n" for line in lines)
    with caplog.at_level(logging.ERROR):
        store = open_store()
    assert "BAD$SERIAL!" in caplog.text and "BAD$SERIAL!" not in open(journal).read()
    assert store.flush() is True
    assert controller.status("SN1").state == "provisioned" and controller.refused == 0


def test_a_change_no_controller_would_take_is_never_journaled(open_store, journal):
    store = open_store()
    store.update("BAD$SERIAL!", change(unclaimed=Unclaimed("BAD$SERIAL!")))
    assert not os.path.exists(journal) or "BAD$SERIAL!" not in open(journal).read()
    assert "BAD$SERIAL!" in open(journal + ".rejected").read()


def test_a_controller_outage_is_not_mistaken_for_a_refusal(open_store, controller, journal):
    store = open_store()
    store.update("SN1", change(status=Status(state="onboarding")))
    controller.up = False
    assert store.flush() is False
    assert not os.path.exists(journal + ".rejected") and "SN1" in open(journal).read()


# --------------------------------------------------------------------------- polls never wait


def test_polls_are_answered_while_a_refresh_waits_for_a_slow_controller(open_store, controller):
    store = open_store()
    controller.get_gate = threading.Event()
    refresher = threading.Thread(target=store.refresh)
    refresher.start()
    answered = threading.Event()

    def poll():
        store.load("SN1")
        store.update("SN1", change())
        store.update("SN1", change(status=Status(state="onboarding", attempts=4)))
        answered.set()

    poller = threading.Thread(target=poll)
    poller.start()
    assert answered.wait(5), "a poll waited for the controller"
    controller.get_gate.set()
    refresher.join(5)
    poller.join(5)
    assert store.load("SN1").status.attempts == 4


def test_a_lookup_gives_up_on_a_busy_controller_and_decides_on_the_copy(open_store, controller):
    # A Clixon backend answers one request at a time: while it commits (seconds at 10,000 declared) the reading
    # session waits, and a device's lookup must not hold the thread that decides everyone's durable work.
    store = open_store()
    controller.get_gate = threading.Event()
    reading = threading.Thread(target=store.look_at_requests)  # holds the reading session, waiting
    reading.start()
    look_again = lambda record: Decision(b"", Event.REQUEST, status=Status(state="onboarding", attempts=7), recheck=True)
    decided = threading.Thread(target=store.update, args=("SN1", look_again))
    decided.start()
    decided.join(5)
    assert not decided.is_alive(), "a device's lookup waited for a busy controller"
    assert store.load("SN1").status.attempts == 7 and store.counters()["lookups_skipped"] == 1
    gets = controller.gets
    store.update("SN1", look_again)  # the next lookups pause: no wait at all
    assert store.counters()["lookups_skipped"] == 2 and controller.gets == gets
    controller.get_gate.set()
    reading.join(5)


def test_a_lookup_of_several_serials_names_them_in_the_controllers_key_order():
    # Clixon's union of key lookups drops entries whose terms are out of its key order (B, A, C selected A and C
    # only, on the lab's controller); tests/integration looks up serials given in reverse order.
    from pnp_service.stores.clixon.netconf import by_serials

    xpath = by_serials(["/p:a", "/p:b"], ["SN3", "SN10", "SN2", "SN3"])
    assert xpath == ("/p:a[pnp:serial='SN10'] | /p:b[pnp:serial='SN10'] | /p:a[pnp:serial='SN2'] | "
                     "/p:b[pnp:serial='SN2'] | /p:a[pnp:serial='SN3'] | /p:b[pnp:serial='SN3']")


def settled(store, serial: str = "SN1"):
    store.update(serial, change(status=Status.from_flat(state="provisioned")))
    assert store.flush() is True
    assert store.peek(serial) is None  # due a relook: its next poll is decided in the batch, after a lookup


def test_a_relook_skipped_on_a_busy_controller_is_not_tried_again_at_every_poll(open_store, controller):
    store = open_store()
    settled(store)
    settled(store, "SN2")
    controller.get_gate = threading.Event()
    reading = threading.Thread(target=store.look_at_requests)  # the controller busy: the reading session waits
    reading.start()
    try:
        polled = store.update("SN1", lambda record: Decision(b"", Event.REQUEST, detail=str(record.status.state)))
        assert polled.detail == "provisioned" and store.counters()["lookups_skipped"] == 1
        assert store.peek("SN1") is not None  # answered on the copy, on the event loop, until the relook is due again
        assert store.peek("SN2") is not None  # during the pause that follows, no device is sent to wait in vain
        store._lookups_paused_until = 0.0  # the pause over
        assert store.peek("SN1") is not None and store.peek("SN2") is None
    finally:
        controller.get_gate.set()
        reading.join(5)


def test_no_relook_while_this_listeners_commit_holds_the_controller(open_store, controller, monkeypatch):
    store = open_store()
    settled(store)
    committing, release = threading.Event(), threading.Event()
    original = FakeSession.commit

    def slow_commit(session, *args, **kwargs):
        committing.set()
        release.wait(10)
        return original(session, *args, **kwargs)

    store.update("SN2", change(status=Status(state="onboarding")))
    monkeypatch.setattr(FakeSession, "commit", slow_commit)
    flusher = threading.Thread(target=store.flush)
    flusher.start()
    try:
        assert committing.wait(5)
        assert store.peek("SN1") is not None  # the controller answers no one during the commit: not asked
    finally:
        release.set()
        flusher.join(5)
    assert store.peek("SN1") is None


def test_the_flusher_rests_as_long_as_its_last_commit_took(open_store, controller, monkeypatch):
    # A commit validates the whole datastore: during a roll-out the controller must keep time for everyone else.
    store = open_store()
    original = FakeSession.commit

    def slow_commit(session, *args, **kwargs):
        time.sleep(0.3)
        return original(session, *args, **kwargs)

    monkeypatch.setattr(FakeSession, "commit", slow_commit)
    assert store.flush_rest() == 0.0
    store.update("SN1", change(status=Status(state="onboarding")))
    assert store.flush() is True
    assert 0.25 * FLUSH_PACE < store.flush_rest() < 1.0
    store.close()
    through = open_store(write_through=True, write_through_seconds=0.1)  # no flusher thread here
    through.update("SN1", change(status=Status(state="onboarding", attempts=2)))
    assert through.flush() is True and through.flush_rest() == 0.0  # answers wait for its commits


def test_a_listener_reads_running_once_at_start_and_again_when_a_transaction_is_announced(tmp_path, controller):
    store = ClixonStore("/fake.sock", journal_path=str(tmp_path / "journal"), session_factory=controller.session)
    try:
        time.sleep(0.3)  # the watcher subscribed before the first read: it asks for no second one
        assert controller.full_reads == 1
        controller.announce_transaction()
        deadline = time.monotonic() + 5
        while controller.full_reads < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert controller.full_reads == 2
    finally:
        store.close()


def test_a_session_that_waits_in_vain_says_the_controller_did_not_answer(monkeypatch):
    session, controller = framed_session(monkeypatch)
    with pytest.raises(ControllerUnavailable, match="did not answer within 0.2 s"):
        with session.answer_within(0.2):
            session.rpc_raw("<get/>")
    controller.close()


def test_polls_of_other_devices_do_not_wait_for_a_journal_fsync(open_store, monkeypatch):
    store = open_store()
    gate, entered = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(descriptor):
        entered.set()
        gate.wait(10)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writer = threading.Thread(target=store.update, args=("SN1", change(status=Status(state="onboarding"))))
    writer.start()
    assert entered.wait(5)
    reader_done = threading.Event()
    threading.Thread(target=lambda: (store.load("OTHER"), store.update("OTHER", change()), reader_done.set())).start()
    assert reader_done.wait(5), "a read waited for another device's fsync"
    gate.set()
    writer.join(5)


# --------------------------------------------------------------------------- the rest of the contract


def test_missing_pyapi_is_a_clear_error(monkeypatch):
    import builtins

    from pnp_service.stores.clixon import netconf

    real_import = builtins.__import__

    def no_clixon(name, *args, **kwargs):
        if name.startswith("clixon"):
            raise ImportError("No module named 'clixon'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_clixon)
    with pytest.raises(StoreError, match="clixon-pyapi is not installed"):
        netconf.Session("/nowhere.sock")


def test_two_listeners_on_one_controller_need_no_sticky_sessions(controller, tmp_path):
    """A device's request served by one listener and its response by another: the second looks again and advances."""
    from conftest import SECRET
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
    gets = controller.gets
    info = messages.device_info(udi, "c1", platform="C9300-24P", version="17", hostname="h", flash_free=1)
    reply = listener_b.work_response(info, "192.0.2.9", "http://pnp/")
    assert messages.parse_server_message(reply.body).service == "bye"
    assert store_b.load("SN1").status.step == "config-upgrade"
    assert controller.gets == gets + 1  # exactly one round trip, for that serial


def test_reset_deletes_the_status_in_running(open_store, controller):
    store = open_store()
    store.update("SN1", change(status=Status.from_flat(state="error", error_code="x")))
    store.flush()
    assert "starts over" in store.reset("SN1")
    assert controller.status("SN1") is None and store.load("SN1").status is None
    assert "nothing to reset" in store.reset("SN1")
    with pytest.raises(UnknownSerial):
        store.reset("NOBODY")
    with pytest.raises(UnknownSerial):
        store.reset("x'] | /ctrl:devices | /pnp:pnp[x='")


def test_read_only_store_never_touches_the_listeners_journal(open_store, controller, journal):
    listener_store = open_store()
    controller.candidate_modified = True
    listener_store.update("SN1", change(status=Status(state="onboarding", attempts=5)))
    controller.candidate_modified = False
    viewer = open_store(read_only=True)
    with pytest.raises(StoreError, match="read-only"):
        viewer.update("SN1", change(status=Status(state="error")))
    viewer.close()
    assert controller.commits == 0 and "attempts" in open(journal).read()


def test_pnp_service_reset_commits_only_the_reset_and_leaves_the_listeners_journal_alone(
        open_store, controller, journal, monkeypatch, capsys):
    import functools

    from pnp_service import cli
    from pnp_service.stores import clixon

    listener_store = open_store()
    listener_store.update("SN1", change(status=Status.from_flat(state="error", error_code="x")))
    listener_store.flush()
    controller.candidate_modified = True  # the listener's next write waits in its journal
    listener_store.update("SN2", change(unclaimed=Unclaimed("SN2", pid="C9200L")))
    controller.candidate_modified = False
    before, commits = open(journal).read(), controller.commits
    assert "SN2" in before
    monkeypatch.setattr(clixon, "ClixonStore", functools.partial(
        clixon.ClixonStore, session_factory=controller.session, start_threads=False))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert cli.main(["reset", "--clixon-socket", "/fake.sock", "--journal", journal, "SN1"]) == 0
    finally:  # the command sets up the process's logging: undo it for the tests after this one
        root.handlers[:], root.level = handlers, level
    assert "starts over" in capsys.readouterr().out
    assert controller.status("SN1") is None and controller.commits == commits + 1  # the reset, nothing replayed
    assert open(journal).read() == before and controller.unclaimed() == []


def test_a_stack_member_is_recorded_in_running_and_resolves_to_its_stack(controller, open_store):
    from conftest import SECRET
    from pnp_service.listener import Listener, ListenerSettings

    declared = controller.running.find(f"{{{model.CONTROLLER_NS}}}services/{p('pnp-device')}")
    etree.SubElement(declared, p("stack"))
    store = open_store()
    listener = Listener(store, ListenerSettings(secret=SECRET))
    active = protocol.Udi("C9300-24P", "V01", "MEM9")
    reply = listener.work_request(messages.work_request(active, "p1"), "192.0.2.9", "http://pnp/")
    assert messages.parse_server_message(reply.body).service == "device-info"  # asked: which stack are you in?
    info = messages.device_info(active, "p1", platform="C9300-24P", version="17", hostname="h",
                                members=[(1, protocol.Udi("C9300-24P", "V01", "SN1")), (2, active)])
    listener.work_response(info, "192.0.2.9", "http://pnp/")
    assert store.load("MEM9").serial == "SN1" and store.flush() is True
    assert [m.findtext(p("stack")) for m in controller.running.iter(p("stack-member"))] == ["SN1"]
    assert controller.unclaimed() == []
    again = open_store()  # another listener reads it from running
    assert again.load("MEM9").serial == "SN1" and again.load("MEM9").caller == "MEM9"


def test_the_controller_keeps_at_most_max_unclaimed_and_the_journal_says_what_was_forgotten(open_store, controller):
    from pnp_service.stores.base import UnclaimedPolicy

    store = open_store(unclaimed_policy=UnclaimedPolicy(max_entries=200, keep_days=7))
    start = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    for n in range(260):
        seen = start + dt.timedelta(seconds=n)
        entry = model.Unclaimed(f"S{n:04d}", "", "X", "Switch", "192.0.2.9", seen, seen)
        store.update(entry.serial, change(unclaimed=entry))
    assert len(store.snapshot().unclaimed) <= 200  # what the listener serves from, before any commit
    store.flush()
    kept = controller.unclaimed()
    assert 190 <= len(kept) <= 200 and "S0259" in kept and "S0000" not in kept  # the longest unseen went first
    assert store.counters()["unclaimed_dropped"] == 260 - len(kept)
    restarted = open_store(unclaimed_policy=UnclaimedPolicy(max_entries=200, keep_days=7))
    later = start + dt.timedelta(days=9)
    restarted.update("LATE", change(unclaimed=model.Unclaimed("LATE", "", "X", "S", "192.0.2.9", later, later)))
    restarted.flush()
    assert controller.unclaimed() == ["LATE"] and restarted.counters()["unclaimed_expired"] == len(kept)


def test_a_reset_made_elsewhere_is_seen_at_the_devices_next_poll(open_store, controller, monkeypatch):
    from pnp_service.stores.clixon import store as clixon_store

    listener = open_store()
    listener.update("SN1", change(status=Status.from_flat(state="error", error_code="x")))
    listener.flush()
    assert listener.peek("SN1") is None  # an error is looked up in the controller before it is answered
    listener.update("SN1", lambda record: Decision(b"", Event.ERROR_BACKOFF))
    assert listener.peek("SN1") is not None  # ... at most every RELOOK_SECONDS
    other = open_store(read_only=True)  # pnp-service reset, or a NETCONF edit: a plain commit announces nothing
    other.reset("SN1")
    monkeypatch.setattr(clixon_store, "RELOOK_SECONDS", 0.0)  # the device's next poll, minutes later
    seen = listener.update("SN1", lambda record: Decision(b"", Event.REQUEST, detail=str(record.status)))
    assert seen.detail == "None"


def test_the_devices_of_one_batch_due_a_relook_are_looked_up_in_one_round_trip(open_store, controller):
    listener = open_store()
    settled = [f"SN{n}" for n in range(5)]
    for serial in settled:
        listener.update(serial, change(status=Status.from_flat(state="provisioned")))
    listener.flush()
    other = open_store(read_only=True)
    other.reset("SN3")  # made elsewhere: seen only by looking
    before = controller.gets
    polls = [(serial, lambda record: Decision(b"", Event.REQUEST, detail=str(record.status))) for serial in settled]
    seen = listener.update_many(polls)
    assert controller.gets - before == 1
    assert [decision.detail == "None" for decision in seen] == [serial == "SN3" for serial in settled]
    assert all(listener.peek(serial) is not None for serial in settled)  # looked: answered on the copy for a while


def test_a_reset_while_the_candidate_holds_uncommitted_edits_says_what_to_do(open_store, controller, monkeypatch):
    from pnp_service.stores.clixon import store as clixon_store

    listener = open_store()
    listener.update("SN1", change(status=Status.from_flat(state="error", error_code="x")))
    listener.flush()
    controller.candidate_modified = True  # an operator's uncommitted edits
    monkeypatch.setattr(clixon_store.time, "sleep", lambda seconds: None)
    with pytest.raises(StoreUnavailable, match="commit or discard them in clixon_cli, then reset again"):
        open_store(read_only=True).reset("SN1")


def test_strangers_cannot_grow_a_stacks_recorded_members_in_the_controller(open_store, controller):
    from pnp_service.stores.base import STACK_MEMBERS_MAX

    store = open_store()
    for n in range(20):
        store.update(f"FAKE{n}", lambda record: Decision(b"", Event.STACK_MEMBER, member_of="SN1"))
    store.flush()
    members = controller.running.find(p("pnp")).findall(p("stack-member"))
    assert len(members) == STACK_MEMBERS_MAX


def test_a_replayed_journal_keeps_the_newest_change_of_a_serial(tmp_path):
    """Kills the mutant where the oldest journal line wins on replay."""
    from pnp_service.stores.clixon.journal import Journal

    journal = Journal(str(tmp_path / "journal"))
    journal.append([Change("SN1", status=Status(state="onboarding", attempts=1))])
    journal.append([Change("SN1", status=Status(state="error", attempts=3))])
    journal.close()
    replayed = Journal(str(tmp_path / "journal")).replay()
    assert replayed["SN1"].status.state == "error" and replayed["SN1"].status.attempts == 3


def unchecked(status: Status, **fields: object) -> Status:
    """A status carrying values its types refuse: what an older or buggy writer might have sent the controller."""
    for name, value in fields.items():
        object.__setattr__(status, name, value)
    return status


# --------------------------------------------------------------------------- write-through: several listeners


def flushing(store: ClixonStore) -> ClixonStore:
    """Run the store's flusher (the only background thread write-through needs) until the store closes."""
    thread = threading.Thread(target=store._flush_loop, daemon=True)
    thread.start()
    store._threads.append(thread)
    return store


def test_write_through_answers_only_once_running_has_the_status(open_store, controller):
    store = flushing(open_store(write_through=True))
    store.update("SN1", change(status=Status(state="onboarding", step="device-info", correlator="c1")))
    assert controller.status("SN1").correlator == "c1"  # committed before update returned, not by a later flush
    assert store.pending_writes() == 0
    store.close()


def test_write_through_reads_the_device_from_the_controller_before_deciding(open_store, controller):
    first, second = open_store(write_through=True), open_store(write_through=True)
    flushing(first)
    first.update("SN1", change(status=Status(state="onboarding", step="device-info", correlator="c1")))
    seen = []
    second.update("SN1", lambda record: seen.append(record.status) or Decision(b"", Event.REQUEST))
    assert seen[0] is not None and seen[0].correlator == "c1"  # its copy predates it; the controller has it
    first.close()


def test_write_through_peeks_only_at_what_no_other_listener_moves(open_store, controller):
    store = open_store(write_through=True)
    assert store.peek("SN1") is None  # declared, on its way: read from the controller first
    assert store.peek("NOBODY1") is not None  # a stranger's poll stays on the quick path
    plain = open_store()
    assert plain.peek("SN1") is not None


def test_write_through_answers_within_its_deadline_when_the_controller_cannot_commit(open_store, controller, caplog):
    store = flushing(open_store(write_through=True, write_through_seconds=0.3))
    controller.candidate_modified = True  # an operator's uncommitted edits: every commit is refused as busy
    with caplog.at_level(logging.WARNING):
        for attempt in (1, 2):
            store.update("SN1", change(status=Status(state="onboarding", attempts=attempt)))
    assert controller.status("SN1") is None and store.load("SN1").status.attempts == 2  # kept in the journal
    assert sum("answered before its status reached the controller" in r.getMessage() for r in caplog.records) == 1
    controller.candidate_modified = False
    store.close()
    assert controller.status("SN1").attempts == 2


@pytest.mark.parametrize("write_through", [True, False])
def test_two_listeners_behind_a_balancer_that_alternates_every_message(controller, tmp_path, write_through):
    """poll -> A, answer -> B, poll -> A ...: each listener sees the other's writes only through the controller.
    With write-through the device provisions, each step sent once; without, it does not (the test can fail)."""
    from balancer import RoundRobin
    from conftest import SECRET
    from fake_controller import declare
    from pnp_service import httpserver
    from pnp_service.app import create_app, served
    from pnp_service.listener import ListenerSettings
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    declare(controller, "SN2", "sw2")
    stores, servers = [], []
    for name in ("a", "b"):
        store = ClixonStore("/fake.sock", journal_path=str(tmp_path / name), session_factory=controller.session,
                            start_threads=False, write_through=write_through)
        stores.append(flushing(store))
        servers.append(httpserver.start_in_thread(served(create_app(store, ListenerSettings(secret=SECRET)))))
    balancer = RoundRobin([server.port for server in servers])
    try:
        simulator = AgentSimulator(balancer.url, time_scale=0, max_polls=12)
        results = [simulator.run(SimulatedDevice(serial)) for serial in ("SN1", "SN2")]
    finally:
        balancer.close()
        for server in servers:
            server.stop()
        for store in stores:
            store.close()
    if write_through:
        assert [(r.outcome, [t.split(":")[0] for t in r.trace]) for r in results] == \
            [("configured", ["device-info", "config-upgrade"])] * 2
        assert min(balancer.sent.values()) >= 4  # both listeners took their share
        assert controller.status("SN1").state == "provisioned" == controller.status("SN2").state
    else:
        assert any(r.outcome != "configured" or len(r.trace) > 2 for r in results), [(r.outcome, r.trace) for r in results]


def test_answers_from_made_up_serials_leave_no_entry_behind(open_store, controller):
    store = open_store()
    for n in range(50):  # each asks the store to look again (an answer it cannot place)
        store.update(f"NOBODY{n}", lambda record: Decision(b"", Event.REQUEST, recheck=True))
    assert controller.gets > 1 and store._looked == {}


# --------------------------------------------------------------------------- resets made in the controller's CLI


def cli_reset(controller, serial: str) -> None:
    """What ``pnp reset SERIAL`` commits in clixon_cli: the status deleted, a reset request beside it."""
    device = controller.device(serial)
    for status in device.findall(p("status")):
        device.remove(status)
    request = etree.SubElement(controller.running.find(p("pnp")), p("reset"))
    etree.SubElement(request, p("serial")).text = serial


def reset_requests(controller) -> list[str]:
    return [r.findtext(p("serial")) for r in controller.running.find(p("pnp")).iterfind(p("reset"))]


def test_a_reset_made_in_the_cli_is_looked_at_once_and_no_older_write_undoes_it(open_store, controller):
    store = open_store()
    store.update("SN1", change(status=Status(state="error", step="config-upgrade")))
    assert store.flush() is True
    store.update("SN1", change(status=Status(state="error", step="config-upgrade", attempts=3)))  # still pending
    cli_reset(controller, "SN1")
    assert store.look_at_requests()[0] == ["SN1"]
    assert store.load("SN1").status is None and store.pending_writes() == 0
    assert store.flush() is True and controller.status("SN1") is None  # nothing of ours brought it back
    assert store.look_at_requests()[0] == []  # looked at once, not at every read


def test_the_devices_next_status_takes_the_reset_request_away(open_store, controller):
    store = open_store()
    cli_reset(controller, "SN1")
    store.look_at_requests()
    store.update("SN1", change(status=Status(state="onboarding", step="device-info", correlator="c1",
                                             last_contact=dt.datetime(2026, 12, 4, tzinfo=dt.timezone.utc))))
    assert store.flush() is True and reset_requests(controller) == []
    store.look_at_requests()
    cli_reset(controller, "SN1")  # a second reset later: new again
    assert store.look_at_requests()[0] == ["SN1"]


def test_pnp_service_reset_is_seen_by_every_listener_at_once(controller, tmp_path):
    listening = ClixonStore("/fake.sock", journal_path=str(tmp_path / "a"), session_factory=controller.session,
                            start_threads=False)
    listening.update("SN1", change(status=Status(state="provisioned")))
    assert listening.flush() is True
    command = ClixonStore("/fake.sock", journal_path=None, read_only=True, session_factory=controller.session,
                          start_threads=False)
    assert "starts over" in command.reset("SN1")
    assert reset_requests(controller) == ["SN1"]
    assert listening.look_at_requests()[0] == ["SN1"] and listening.load("SN1").status is None


# --------------------------------------------------------------------------- claims and clears made in the CLI


def test_a_reset_of_a_switch_bound_to_a_location_frees_the_location_in_one_controller_commit(open_store, controller):
    declare(controller, "FOC1", "access-sw-7")
    located = etree.SubElement(declared(controller, "FOC1"), p("located"))
    for name, value in (("neighbor", "dist-sw-1"), ("port", "Gi1/0/48")):
        etree.SubElement(located, p(name)).text = value
    declare(controller, "SN9", "by-serial")
    store = open_store()
    assert store.load("FOC1").declaration.located == ("dist-sw-1", "Gi1/0/48")
    cli_reset(controller, "FOC1")
    cli_reset(controller, "SN9")
    commits = controller.controller_commits
    acted = store.look_at_requests()
    assert acted.resets == ["FOC1", "SN9"] and acted.freed == ["FOC1"]
    assert controller.controller_commits == commits + 1  # the declaration and the reset request go together
    assert declared(controller, "FOC1") is None and reset_requests(controller) == ["SN9"]
    assert declared(controller, "SN9") is not None  # a serial's declaration is the operator's: a reset keeps it
    record = store.load("FOC1")
    assert record.declaration is None and record.work is None  # a stranger again: found there, it is bound anew


def cli_claim(controller, serial: str, hostname: str, template_file: str) -> None:
    """What ``pnp claim SERIAL hostname H template-file F`` commits in clixon_cli: a claim entry, nothing more."""
    claim = etree.SubElement(controller.running.find(p("pnp")), p("claim"))
    for name, value in (("serial", serial), ("hostname", hostname), ("template-file", template_file)):
        etree.SubElement(claim, p(name)).text = value


def claims(controller) -> dict[str, str]:
    """serial -> the listener's refusal ("" while not looked at) of each claim left in running."""
    return {c.findtext(p("serial")): c.findtext(p("error")) or "" for c in controller.running.find(p("pnp")).iterfind(p("claim"))}


def declared(controller, serial: str):
    services = controller.running.find(f"{{{model.CONTROLLER_NS}}}services")
    return next((d for d in services.iterfind(p("pnp-device")) if d.findtext(p("serial")) == serial), None)


def stranger(store, serial: str, pid: str = "C9200L-24P") -> None:
    store.update(serial, change(unclaimed=Unclaimed(serial=serial, pid=pid, address="127.0.0.9")))
    assert store.flush() is True


def test_a_claim_declares_the_stranger_with_the_pid_it_reported_in_a_commit_that_plans_it(open_store, controller):
    store = open_store()
    stranger(store, "FOC99X")
    cli_claim(controller, "FOC99X", "access-sw-42", "access.j2")
    assert store.look_at_requests().claimed == ["FOC99X"]
    declaration = model.declaration_from_xml(declared(controller, "FOC99X"))
    assert (declaration.pid, declaration.hostname, declaration.template_file) == ("C9200L-24P", "access-sw-42",
                                                                                  "access.j2")
    assert controller.controller_commits == 1 and claims(controller) == {}  # one transaction: declared, claim gone
    record = store.load("FOC99X")  # looked up at once: served from its next poll
    assert record.declaration is not None and record.work is not None and record.work.steps


def test_a_claim_that_cannot_be_made_stays_with_the_reason_and_is_not_tried_again(open_store, controller):
    store = open_store()
    stranger(store, "WEIRDPID", pid="X" * 65)
    cli_claim(controller, "SN1", "sw-1", "access.j2")  # declared already
    cli_claim(controller, "NEVERSEEN", "sw-2", "access.j2")  # never called in
    cli_claim(controller, "WEIRDPID", "sw-3", "access.j2")
    assert store.look_at_requests().claimed == []
    refused = claims(controller)
    assert "declared already" in refused["SN1"] and "has not called in undeclared" in refused["NEVERSEEN"]
    assert "product id" in refused["WEIRDPID"]
    assert declared(controller, "NEVERSEEN") is None and declared(controller, "WEIRDPID") is None
    commits = controller.commits
    assert store.look_at_requests().claimed == [] and controller.commits == commits  # refused once, left alone


def test_a_claim_the_controllers_transaction_refuses_records_its_reason(open_store, controller):
    store = open_store()
    stranger(store, "FOC99X")
    controller.transaction_failure = "service module: template file missing.j2 not found"
    cli_claim(controller, "FOC99X", "sw", "missing.j2")
    assert store.look_at_requests().claimed == []
    assert "missing.j2 not found" in claims(controller)["FOC99X"] and declared(controller, "FOC99X") is None


def test_a_claim_waits_while_the_candidate_holds_someones_edits(open_store, controller):
    store = open_store()
    stranger(store, "FOC99X")
    controller.candidate_modified = True
    cli_claim(controller, "FOC99X", "sw", "access.j2")
    assert store.look_at_requests().claimed == [] and claims(controller) == {"FOC99X": ""}  # not refused: later
    controller.candidate_modified = False
    assert store.look_at_requests().claimed == ["FOC99X"]


def test_two_listeners_make_a_claim_once(controller, tmp_path):
    from pnp_service.stores.clixon.operator_requests import Claim, make_claim

    first, second = (ClixonStore("/fake.sock", journal_path=str(tmp_path / name), session_factory=controller.session,
                                 start_threads=False) for name in "ab")
    stranger(first, "FOC99X")
    cli_claim(controller, "FOC99X", "sw", "access.j2")
    assert first.look_at_requests().claimed == ["FOC99X"]
    # The second read the claim before the first made it: under the lock it finds it gone, and changes nothing.
    assert make_claim(controller.session(""), Claim("FOC99X", "sw", "access.j2"))[0] == "gone"
    assert second.look_at_requests().claimed == [] and controller.controller_commits == 1


def test_pnp_clear_unclaimed_and_clear_claims_empty_their_lists(open_store, controller):
    store = open_store()
    for serial in ("STRANGER1", "STRANGER2"):
        stranger(store, serial)
    cli_claim(controller, "NEVERSEEN", "sw", "access.j2")
    store.look_at_requests()  # refused: stays
    for request in ("clear-unclaimed", "clear-claims"):  # what pnp clear unclaimed / claims commit
        etree.SubElement(controller.running.find(p("pnp")), p(request))
    assert store.look_at_requests().cleared == {"unclaimed": 2, "claim": 1}
    pnp = controller.running.find(p("pnp"))
    assert controller.unclaimed() == [] and claims(controller) == {}
    assert pnp.find(p("clear-unclaimed")) is None and pnp.find(p("clear-claims")) is None  # requests done
    assert store.load("STRANGER1").unclaimed is None and controller.device("SN1") is not None
    assert store.look_at_requests().cleared == {}


# --------------------------------------------------------------------------- entries nobody needs


def undeclare(controller, serial: str) -> None:
    """What the controller does when a declaration is deleted: the service's work goes, the entry stays."""
    services = controller.running.find(f"{{{model.CONTROLLER_NS}}}services")
    for declared in [d for d in services if d.findtext(p("serial")) == serial]:
        services.remove(declared)
    device = controller.device(serial)
    for work in device.findall(p("work")):
        device.remove(work)


def test_a_declaration_deleted_before_its_device_called_in_leaves_no_empty_entry(open_store, controller):
    from fake_controller import declare

    declare(controller, "SN2", "sw2")
    undeclare(controller, "SN2")
    store = open_store()
    assert store.sweep() == ["SN2"]
    assert controller.device("SN2") is None and controller.device("SN1") is not None  # the declared one stays
    assert store.sweep() == []


def test_a_removed_row_goes_once_unseen_for_the_policys_days_and_not_before(open_store, controller):
    from fake_controller import declare
    from pnp_service.stores.base import UnclaimedPolicy

    now = dt.datetime.now(dt.timezone.utc)
    for serial, days in (("SN2", 8), ("SN3", 1)):
        declare(controller, serial, serial.lower())
        store = open_store(unclaimed_policy=UnclaimedPolicy(keep_days=7))
        store.update(serial, change(status=Status(state="provisioned", last_contact=now - dt.timedelta(days=days))))
        assert store.flush() is True
        undeclare(controller, serial)
    store = open_store(unclaimed_policy=UnclaimedPolicy(keep_days=7))
    assert store.sweep() == ["SN2"]
    assert controller.device("SN2") is None and controller.status("SN3").state == "provisioned"


def test_an_entry_that_got_work_since_the_copy_was_read_is_never_swept(open_store, controller):
    from fake_controller import declare

    declare(controller, "SN2", "sw2")
    undeclare(controller, "SN2")
    store = open_store()  # its copy: SN2 empty
    declare(controller, "SN2", "sw2")  # declared again meanwhile: the service module wrote work into it
    controller.running.find(p("pnp")).remove(controller.device("SN2"))  # (declare() appends a second entry)
    assert store.sweep() == [] and controller.device("SN2").find(p("work")) is not None


# --------------------------------------------------------------------------- the controller socket's framing


def framed_session(monkeypatch):
    """A Session over one end of a socket pair (no controller, no pyapi): the other end plays the controller."""
    import socket

    from pnp_service.stores.clixon import netconf

    ours, theirs = socket.socketpair()
    monkeypatch.setattr(netconf, "_pyapi_socket", lambda: lambda path: ours)
    return netconf.Session("/fake.sock", user="test"), theirs


def test_a_reply_is_read_whole_in_any_pieces_and_chunks(monkeypatch):
    session, controller = framed_session(monkeypatch)
    reply = b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><data>' + b"x" * 200_000 + b"</data></rpc-reply>"
    framed = b"\n#%d\n%s\n##\n" % (len(reply), reply)
    sender = threading.Thread(target=lambda: [controller.sendall(framed[i:i + 7777]) for i in range(0, len(framed), 7777)])
    sender.start()
    assert bytes(session.rpc_raw("<get/>")) == reply
    sender.join()
    two = b"\n#5\n<ok/>\n#11\n<more/>tail\n##\n"  # RFC 6242 allows a message in several chunks
    controller.sendall(two)
    assert bytes(session.rpc_raw("<get/>")) == b"<ok/><more/>tail"
    controller.sendall(b"\n#3\n<a/\n##\n\n#4\n<b/>\n##\n")  # two messages in one receive: each read on its own
    assert bytes(session.rpc_raw("<get/>")) == b"<a/" and bytes(session.rpc_raw("<get/>")) == b"<b/>"


def sent_chunk(controller, send) -> tuple[bytes, bytes]:
    """Run ``send`` while the controller's end reads one framed message and answers ok: the chunk header, the rest."""
    received = bytearray()

    def read() -> None:
        while not received.endswith(b"\n##\n"):
            received.extend(controller.recv(65536))
        controller.sendall(b"\n#6\n<ok/>\n\n##\n")

    reader = threading.Thread(target=read)
    reader.start()
    send()
    reader.join()
    header, _, rest = bytes(received).partition(b"\n")[2].partition(b"\n")
    return header, rest


def test_an_rpc_goes_out_as_one_rfc6242_chunk_however_large(monkeypatch):
    session, controller = framed_session(monkeypatch)
    body = "<edit-config>" + "é" * 300_000 + "</edit-config>"
    header, rest = sent_chunk(controller, lambda: session.rpc_raw(body))
    assert header.startswith(b"#") and int(header[1:]) == len(rest) - len(b"\n##\n")
    message = etree.fromstring(rest[:-len(b"\n##\n")])
    assert message.tag == "{urn:ietf:params:xml:ns:netconf:base:1.0}rpc" and message.get("message-id") == "1"
    assert message[0].text == "é" * 300_000


def test_an_edit_given_in_pieces_goes_out_whole_as_one_chunk(monkeypatch):
    # The store's status commits: thousands of pieces, megabytes in all, written a buffer at a time.
    session, controller = framed_session(monkeypatch)
    pieces = [b'<pnp xmlns="urn:pnp-service:pnp">'] + [b"<device><serial>S%05d</serial></device>" % i
                                                        for i in range(20_000)] + [b"</pnp>"]
    header, rest = sent_chunk(controller, lambda: session.edit_config(pieces))
    assert int(header[1:]) == len(rest) - len(b"\n##\n")
    config = etree.fromstring(rest[:-len(b"\n##\n")]).find(".//{urn:ietf:params:xml:ns:netconf:base:1.0}config")
    serials = [element.text for element in config.iter("{urn:pnp-service:pnp}serial")]
    assert serials == [f"S{i:05d}" for i in range(20_000)]


@pytest.mark.parametrize("garbage", [b"\n#abc\n", b"\n#0\n", b"\n#" + b"9" * 40])
def test_framing_the_reader_cannot_follow_is_a_lost_connection_not_a_hang(monkeypatch, garbage):
    session, controller = framed_session(monkeypatch)
    controller.sendall(garbage)
    controller.shutdown(socket.SHUT_WR)
    with pytest.raises(StoreUnavailable, match="framing|connection lost"):
        session.rpc_raw("<get/>")


def test_a_controller_that_goes_away_mid_reply_is_a_lost_connection(monkeypatch):
    session, controller = framed_session(monkeypatch)
    controller.sendall(b"\n#100\n<rpc-reply>")
    controller.close()
    with pytest.raises(StoreUnavailable, match="connection lost"):
        session.rpc_raw("<get/>")


def test_a_large_reply_is_handed_on_in_pieces_and_an_error_reply_raises_first(monkeypatch):
    from pnp_service.stores.clixon import RpcError

    session, controller = framed_session(monkeypatch)
    reply = b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><data>' + b"y" * 3_000_000 + b"</data></rpc-reply>"
    sender = threading.Thread(target=controller.sendall, args=(b"\n#%d\n%s\n##\n" % (len(reply), reply),))
    sender.start()
    pieces = list(session.get_config_pieces("running", "/pnp:pnp"))
    sender.join()
    assert b"".join(pieces) == reply and len(pieces) > 1 and max(map(len, pieces)) <= 1 << 20
    error = (b'<rpc-reply xmlns="urn:ietf:params:xml:ns:netconf:base:1.0"><rpc-error><error-tag>lock-denied</error-tag>'
             b"<error-message>locked</error-message></rpc-error></rpc-reply>")
    controller.sendall(b"\n#%d\n%s\n##\n" % (len(error), error))
    with pytest.raises(RpcError, match="locked"):
        list(session.get_config_pieces("running", "/pnp:pnp"))


# --------------------------------------------------------------------------- many updates at once


def test_many_updates_are_journaled_with_one_fsync_and_each_decides_on_what_came_before(open_store, controller,
                                                                                       monkeypatch):
    from fake_controller import declare

    declare(controller, "SN2", "sw2")
    store = open_store()
    assert store.updates_many_in_one_commit and not open_store(write_through=True).updates_many_in_one_commit
    appends = []
    real_append = store._journal.append
    monkeypatch.setattr(store._journal, "append", lambda changes: appends.append(1) or real_append(changes))
    seen = []

    def count_attempts(record):
        seen.append(record.status.attempts if record.status else None)
        attempts = (record.status.attempts if record.status else 0) + 1
        return Decision(b"", Event.REQUEST, status=Status(state="onboarding", step="device-info", attempts=attempts))

    def broken(record):
        raise RuntimeError("a decision that failed")

    results = store.update_many([("SN1", count_attempts), ("SN2", count_attempts), ("SN3", broken),
                                 ("SN1", count_attempts)])
    assert isinstance(results[2], RuntimeError) and all(isinstance(r, Decision) for i, r in enumerate(results) if i != 2)
    assert seen == [None, None, 1]  # SN1's second message decided on its first's change
    assert len(appends) == 2  # SN1 and SN2 together, then SN1 again: not one fsync per update
    assert store.load("SN1").status.attempts == 2 and store.load("SN2").status.attempts == 1
    assert store.flush() is True and controller.status("SN1").attempts == 2

    def failing(changes):
        raise OSError("disk full")

    monkeypatch.setattr(store._journal, "append", failing)
    results = store.update_many([("SN1", count_attempts), ("SN2", count_attempts)])
    assert all(isinstance(r, OSError) for r in results)  # nothing is durable: no device hears a decision
    assert store.load("SN1").status.attempts == 2
