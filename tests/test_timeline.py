"""A device's timeline (pnp_service/timeline.py): its bounds, what a provisioning with a retry, a reset and a reload
leaves in it, and ``pnp-service status SERIAL``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import threading

from conftest import SECRET, FakeClock, datastore_xml, image_in_folder, open_store
from pnp_service import httpserver
from pnp_service.app import create_app, served
from pnp_service.listener import Listener, ListenerSettings
from pnp_service.simulator import AgentSimulator, SimulatedDevice
from pnp_service.timeline import KEEP_DAYS, PER_DEVICE, Entry, TimelineDb, TimelineWriter, default_path
from test_loop import cli

T0 = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)


def entry(n: int, event: str = "request", at: dt.datetime = T0) -> Entry:
    return Entry(at + dt.timedelta(seconds=n), event, "192.0.2.1", f"step-{n}", "onboarding", f"n={n}")


def test_a_device_keeps_its_newest_entries_and_none_older_than_the_limit(tmp_path):
    now = (T0 + dt.timedelta(days=KEEP_DAYS + 5)).timestamp()
    db = TimelineDb(str(tmp_path / "t.db"), clock=lambda: now)
    db.add({"OLD": [entry(0, at=T0)], "KEEP": [entry(0, at=T0 + dt.timedelta(days=10))]})  # OLD: 35 days before now
    assert db.of("OLD") == []
    db.add({"BUSY": [entry(n) for n in range(PER_DEVICE + 50)]})
    kept = db.of("BUSY")
    assert len(kept) == PER_DEVICE and kept[0].detail == "n=50" and kept[-1].detail == f"n={PER_DEVICE + 49}"
    assert len(db.of("KEEP")) == 1  # one device's cap is its own
    reader = TimelineDb(str(tmp_path / "t.db"), read_only=True)
    assert [e.detail for e in reader.of("BUSY")] == [e.detail for e in kept]
    assert TimelineDb(str(tmp_path / "absent.db"), read_only=True).of("X") == []


def test_an_entry_that_repeats_the_last_one_is_counted_on_it_not_added(tmp_path):
    db = TimelineDb(str(tmp_path / "t.db"))
    same = [Entry(T0 + dt.timedelta(seconds=n), "refused-claim", "192.0.2.66", "", "planned", "not the declared PID")
            for n in range(5)]
    db.add({"SN1": same[:2]})
    db.add({"SN1": same[2:] + [entry(10), same[0]]})
    told = db.of("SN1")
    assert [(e.event, e.repeats) for e in told] == [("refused-claim", 5), ("request", 1), ("refused-claim", 1)]
    assert told[0].at == T0 and told[0].last_at == T0 + dt.timedelta(seconds=4)
    other_address = dataclasses.replace(same[0], address="192.0.2.67")
    db.add({"SN1": [other_address]})
    assert len(db.of("SN1")) == 4  # another address is another entry


def listening(tmp_path, declaration: str):
    """A listener (no HTTP) over one declaration, its timeline in tmp_path: (store, clock, listener, timeline)."""
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(declaration))
    store = open_store(str(path))
    clock = FakeClock()
    timeline = TimelineWriter(TimelineDb(str(tmp_path / "t.db")))
    return store, clock, Listener(store, ListenerSettings(secret=SECRET), clock=clock, timeline=timeline), timeline


def test_a_stranger_claiming_a_declared_serial_again_and_again_cannot_push_its_history_out(tmp_path):
    from pnp_service import protocol
    from pnp_service.simulator import messages

    store, clock, listener, timeline = listening(
        tmp_path, "<serial>SN1</serial><pid>C9300-24P</pid><hostname>h</hostname><config><template>x</template></config>")
    genuine = protocol.Udi("C9300-24P", "V01", "SN1")
    listener.work_request(messages.work_request(genuine, "g1"), "192.0.2.1", "http://pnp.invalid/")  # its history
    rogue = protocol.Udi("C9500-24Y4C", "V01", "SN1")
    for n in range(PER_DEVICE + 50):
        listener.work_request(messages.work_request(rogue, f"r{n}"), "192.0.2.66", "http://pnp.invalid/")
        clock.advance(1)
    assert listener.close()
    told = timeline.db.of("SN1")
    assert told[0].event == "request" and told[0].step == "device-info"
    assert len(told) <= 3 and {e.event for e in told[1:]} == {"refused-claim"}, told
    store.close()


def test_the_writer_never_makes_the_listener_wait_and_drops_what_does_not_fit(tmp_path):
    db = TimelineDb(str(tmp_path / "t.db"))
    release = threading.Event()
    entered = threading.Event()
    add = db.add

    def slow_add(batch):
        entered.set()
        release.wait(10)
        add(batch)

    db.add = slow_add  # type: ignore[method-assign]
    dropped = []
    writer = TimelineWriter(db, capacity=3, on_dropped=lambda: dropped.append(1))
    assert writer.record("A", entry(0))
    assert entered.wait(5)  # the first batch is being written (held): three more fit, the fourth does not
    assert all(writer.record("A", entry(n)) for n in (1, 2, 3))
    assert not writer.record("B", entry(4)) and dropped == [1]
    release.set()
    assert writer.flush(5)
    assert [e.detail for e in db.of("A")] == ["n=0", "n=1", "n=2", "n=3"] and db.of("B") == []


def test_the_timeline_file_sits_beside_the_state_database():
    assert default_path("/var/lib/pnp/pnp-datastore.state.db") == "/var/lib/pnp/pnp-datastore.timeline.db"
    assert default_path("/var/lib/pnp-service/state.sqlite") == "/var/lib/pnp-service/timeline.db"


def test_a_provisioning_with_a_retry_a_reset_and_a_reload_is_told_in_order(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(
        "<serial>FOC2001X0AB</serial><pid>C9300-24P</pid><hostname>acc-1</hostname>"
        "<config><template>hostname {{ hostname }}\nsnmp-server community {{ community }}</template></config>"
        "<variable><name>community</name><value>n0t-in-the-timeline</value></variable>"
        + image_in_folder(tmp_path, "cat9k_iosxe.17.12.04.SPA.bin", "17.12.04")))
    store = open_store(str(path))
    clock = FakeClock()
    settings = ListenerSettings(secret=SECRET, image_dir=str(tmp_path / "images"))
    timeline = TimelineWriter(TimelineDb(default_path(str(tmp_path / "ds.state.db"))))
    listener = Listener(store, settings, clock=clock, timeline=timeline)
    server = httpserver.start_in_thread(served(create_app(store, settings, listener=listener)))
    try:
        simulator = AgentSimulator(f"http://127.0.0.1:{server.port}", sleep=clock.advance, max_polls=40)
        failing = SimulatedDevice("FOC2001X0AB", version="17.12.04", fail_service="config-upgrade")
        assert simulator.run(failing).outcome == "failed"
        assert listener.close()
        reset = cli("reset", "--datastore", str(path), "FOC2001X0AB")
        assert reset.returncode == 0, reset.stderr
        assert simulator.run(SimulatedDevice("FOC2001X0AB", version="17.3.1")).outcome == "configured"
        assert listener.close()
    finally:
        server.stop()
        store.close()

    shown = cli("status", "--datastore", str(path), "FOC2001X0AB", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    told = json.loads(shown.stdout)
    assert told["device"]["serial"] == "FOC2001X0AB" and told["device"]["state"] == "provisioned"
    events = [(e["event"], e["step"]) for e in told["timeline"]]
    retry = events.index(("retry", "config-upgrade"))
    failed = next(i for i, (event, _) in enumerate(events) if event in ("fail", "gave-up"))
    reset_at = events.index(("reset", ""))
    installed = events.index(("request", "image-install"))
    downloaded = next(i for i, (event, _) in enumerate(events) if event == "download-done")
    provisioned = events.index(("provisioned", "config-upgrade")) if ("provisioned", "config-upgrade") in events \
        else next(i for i, (event, _) in enumerate(events) if event == "provisioned")
    assert retry < failed < reset_at < installed < downloaded < provisioned, events
    assert all(e["address"] == "127.0.0.1" for e in told["timeline"] if e["event"] != "reset")
    assert "n0t-in-the-timeline" not in shown.stdout  # a configuration's text is never an entry, only its size

    table = cli("status", "--datastore", str(path), "FOC2001X0AB")
    assert table.returncode == 0 and "provisioned" in table.stdout and "download-done" in table.stdout
    assert table.stdout.index("retry") < table.stdout.index("reset") < table.stdout.index("image-install")


def test_status_of_a_serial_nobody_knows_says_so(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN1</serial><hostname>h</hostname><config><template>x</template></config>"))
    unknown = cli("status", "--datastore", str(path), "NOBODY1")
    assert unknown.returncode == 1 and "NOBODY1 is not declared" in unknown.stderr and "Traceback" not in unknown.stderr
    declared = cli("status", "--datastore", str(path), "SN1")
    assert declared.returncode == 0 and "(no timeline entries for SN1)" in declared.stdout
    wrong = cli("status", "--datastore", str(path), "SN1", "--format", "xml")
    assert wrong.returncode != 0 and "table or json" in wrong.stderr


def test_a_planning_error_is_told_once_not_at_every_poll(tmp_path):
    store, clock, listener, timeline = listening(
        tmp_path, "<serial>SN1</serial><hostname>h</hostname>"
                  "<config><template>hostname {{ undefined_variable }}</template></config>")
    from pnp_service import protocol
    from pnp_service.simulator import messages

    udi = protocol.Udi("C9300-24P", "V01", "SN1")
    for n in range(5):
        reply = listener.work_request(messages.work_request(udi, f"c{n}"), "192.0.2.1", "http://pnp.invalid/")
        assert b"backoff" in reply.body
        clock.advance(60)
    assert listener.close()
    told = timeline.db.of("SN1")
    assert [e.event for e in told] == ["planning-error"] and "undefined_variable" in told[0].detail
    store.close()
