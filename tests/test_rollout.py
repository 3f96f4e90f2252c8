"""A roll-out never stalls: every wait bounded, image transfers admitted, strangers capped, the genuine device served.

The HTTP server's own deadlines and caps are in test_rollout_server.py; the whole roll-out under load, on
``pnp-service serve`` with its defaults, at the end of this file.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import http.client
import json
import threading
import logging

import pytest

from conftest import SECRET, FakeClock, datastore_xml, open_store
from pnp_service import logs, protocol, sudi
from pnp_service.listener import Listener, ListenerSettings
from pnp_service.model import Unclaimed
from pnp_service.provisioner import Settings
from pnp_service.simulator import messages
from pnp_service.stores.base import UnclaimedPolicy
from test_provisioner import UDI, Device, declared

UDI_OTHER_PID = protocol.Udi("WS-C2960X-48", "V01", "SN1")

IMAGE = dict(image_version="17.9.4a", image_url="http://images.invalid/cat9k.17.9.4a.bin", image_md5="b" * 32,
             image_reload_wait=600)


# --------------------------------------------------------------------------- every waiting phase has a deadline


def install_answer_lost() -> Device:
    """A device sent its image-install, whose answer was lost: its next poll (no reload reason, still the old
    image) got the verify's device-info, not yet answered."""
    device = Device(declared(**IMAGE), Settings(max_attempts=2))
    device.poll()
    device.answer_device_info(version="17.3.1")
    _, message = device.poll()
    assert message.service == "image-install"
    device.wait(5)
    _, message = device.poll()
    assert message.service == "device-info" and device.status.phase == "verify"
    return device


def test_a_lost_install_answer_ends_in_a_retry_at_the_reload_deadline_not_a_week_of_device_info():
    device = install_answer_lost()
    device.answer_device_info(version="17.3.1")
    asked = 1
    for _ in range(200):  # a week of polls every hour at most
        device.wait(3600)
        _, message = device.poll()
        if message.service == "device-info":
            asked += 1
            device.answer_device_info(version="17.3.1")
        if device.status.state == "error":
            break
    assert device.status.state == "error" and device.status.error.code == "no-reload"
    assert asked <= 4


def test_after_a_lost_install_answer_the_old_version_waits_out_the_reload_wait_before_an_attempt_counts():
    device = install_answer_lost()
    device.wait(30)
    device.answer_device_info(version="17.3.1")  # still the old image, 35 s into a 600 s reload wait
    assert device.status.attempts == 0 and device.status.phase == "verify" and device.status.state == "onboarding"
    _, message = device.poll()
    assert message.service == "backoff"


def test_a_reload_onto_the_old_image_is_counted_at_once():
    device = Device(declared(**IMAGE), Settings(max_attempts=3))
    device.install_from("17.3.1")
    device.wait(240)  # a real reload
    _, message = device.poll(reloaded=True)
    assert message.service == "device-info"
    device.answer_device_info(version="17.3.1")
    assert device.status.attempts == 1 and device.status.error.code == "image-not-running"
    for _ in range(10):  # an agent that says "reloaded" in every work request is not asked again in a loop
        _, message = device.poll(reloaded=True)
        assert message.service == "backoff"


def test_while_a_reload_is_awaited_the_device_backs_off_for_the_rest_of_the_wait():
    device = Device(declared(**IMAGE))
    device.install_from("17.3.1")
    device.wait(10)
    _, message = device.poll()  # polls once more before it reloads: still the old version
    device.answer_device_info(version="17.3.1")
    _, message = device.poll()
    waits = messages.parse_server_message(protocol.backoff(protocol.Envelope(device.udi, "c"), "x", seconds=590))
    assert message.service == "backoff" and message.find_text("backoff/callbackAfter/minutes") == \
        waits.find_text("backoff/callbackAfter/minutes")  # the rest of the 600 s, in one backoff
    device.wait(100)
    for _ in range(20):  # polls inside the wait never get a request
        _, message = device.poll()
        assert message.service == "backoff"


def test_a_request_asked_again_without_an_answer_is_bounded():
    device = Device(declared(), Settings(max_attempts=3))
    for _ in range(3):
        _, message = device.poll()  # never answers its device-info: sent, then asked again twice
        assert message.service == "device-info"
    assert device.status.state == "onboarding"
    _, message = device.poll()
    assert message.service == "backoff"
    assert device.status.state == "error" and device.status.error.code == "no-answer"
    assert "without answering its device-info request" in device.status.error.message


# --------------------------------------------------------------------------- image transfers


@pytest.fixture
def image_lab(tmp_path):
    image = b"IMAGE" * 20_000
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat9k.17.9.4a.bin").write_bytes(image)
    bodies = [f"<serial>IMG{n}</serial><pid>C9300-24P</pid><hostname>h{n}</hostname><config><template>x</template>"
              f"</config><image><version>17.9.4a</version><url>cat9k.17.9.4a.bin</url>"
              f"<md5>{hashlib.md5(image).hexdigest()}</md5></image>" for n in (1, 2)]
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(*bodies))
    store = open_store(str(path))
    clock = FakeClock()
    listener = Listener(store, ListenerSettings(secret=SECRET, image_dir=str(tmp_path / "images"),
                                                max_image_transfers=1), clock=clock)
    yield listener, clock, image
    store.close()


def to_install(listener, serial, address="192.0.2.1"):
    """Poll, answer device-info with the old version, poll again: the message the device then gets."""
    udi = protocol.Udi("C9300-24P", "V01", serial)
    reply = messages.parse_server_message(listener.work_request(messages.work_request(udi, f"{serial}-1"), address,
                                                                "http://pnp.invalid").body)
    assert reply.service == "device-info"
    listener.work_response(messages.device_info(udi, f"{serial}-1", version="17.3.1", flash_free=10**9,
                                                platform="C9300-24P", hostname="Switch"), address, "http://pnp.invalid")
    return messages.parse_server_message(listener.work_request(messages.work_request(udi, f"{serial}-2"), address,
                                                               "http://pnp.invalid").body)


def test_beyond_the_transfer_limit_a_device_is_told_to_wait_never_failed(image_lab):
    listener, clock, image = image_lab
    first = to_install(listener, "IMG1")
    assert first.service == "image-install"
    second = to_install(listener, "IMG2")
    assert second.service == "backoff" and "transfer slot" in second.find_text("backoff/reason")
    minute = messages.parse_server_message(
        protocol.backoff(protocol.Envelope(protocol.Udi("C9300-24P", "V01", "IMG2"), "c"), "x", seconds=60))
    assert [second.find_text(f"backoff/callbackAfter/{unit}") for unit in ("hours", "minutes", "seconds")] == \
        [minute.find_text(f"backoff/callbackAfter/{unit}") for unit in ("hours", "minutes", "seconds")]  # the queue's 60 s
    status = listener.store.load("IMG2").status
    assert status.phase == "queued" and status.attempts == 0 and status.state == "onboarding"
    # IMG1 downloads the whole image: its slot is free again, and IMG2 gets its install at its next poll.
    url = first.find_text("image/copy/source/location").split("pnp.invalid", 1)[1]
    path, _, query = url.partition("?")
    _, _, _, kind, serial, revision, name = path.split("/")
    args = dict(part.split("=") for part in query.split("&"))
    reply = listener.download(kind, serial, revision, name, args["expires"], args["sig"], "192.0.2.1")
    assert reply.file_path and listener.transfers.in_use() == 1
    reply.on_close(len(image), True)
    assert listener.transfers.in_use() == 0
    clock.advance(61)
    udi = protocol.Udi("C9300-24P", "V01", "IMG2")
    again = messages.parse_server_message(listener.work_request(messages.work_request(udi, "IMG2-3"), "192.0.2.2",
                                                                "http://pnp.invalid").body)
    assert again.service == "image-install"


def test_a_download_without_a_free_slot_gets_503_retry_after(image_lab):
    listener, _, _ = image_lab
    to_install(listener, "IMG1")
    assert listener.transfers.reserve("IMG1") and not listener.transfers.reserve("SOMEONE")
    work = listener.store.load("IMG2").work
    path = listener.signer.path("image", "IMG2", work.revision, "cat9k.17.9.4a.bin", listener.clock())
    query = dict(part.split("=") for part in path.split("?")[1].split("&"))
    reply = listener.download("image", "IMG2", work.revision, "cat9k.17.9.4a.bin", query["expires"], query["sig"],
                              "192.0.2.2")
    assert reply.status == 503 and ("Retry-After", "60") in reply.headers


def test_a_broken_transfer_keeps_its_slot_for_the_resume():
    from pnp_service.downloads import TransferGate

    clock = FakeClock(0)
    gate = TransferGate(1, hold_seconds=300, clock=clock)
    assert gate.begin("A")
    gate.end("A", complete=False)  # the link broke
    assert not gate.reserve("B")  # A keeps its place...
    assert gate.begin("A")  # ...and resumes
    gate.end("A", complete=True)
    assert gate.reserve("B")
    clock.advance(301)  # a reservation nobody uses lapses
    assert gate.reserve("C")


# --------------------------------------------------------------------------- what strangers can grow


def stranger(serial: str, seen: dt.datetime) -> Unclaimed:
    return Unclaimed(serial, f"PID:X,VID:V1,SN:{serial}", "X", "Switch", "192.0.2.9", seen, seen)


def test_the_embedded_store_keeps_at_most_max_unclaimed_and_forgets_the_longest_unseen(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml())
    store = open_store(str(path), unclaimed_policy=UnclaimedPolicy(max_entries=50, keep_days=7))
    start = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)
    from pnp_service.provisioner import Decision, Event

    for n in range(120):
        entry = stranger(f"S{n:04d}", start + dt.timedelta(seconds=n))
        store.update(entry.serial, lambda record, entry=entry: Decision(b"", Event.UNCLAIMED, unclaimed=entry))
    kept = store.snapshot().unclaimed
    assert len(kept) == 50 and min(e.serial for e in kept) == "S0070"  # the newest 50
    assert store.counters()["unclaimed_dropped"] == 70
    late = stranger("LATE", start + dt.timedelta(days=8))
    store.update("LATE", lambda record: Decision(b"", Event.UNCLAIMED, unclaimed=late))
    assert [e.serial for e in store.snapshot().unclaimed] == ["LATE"]  # the others were unseen for 8 days
    assert store.counters()["unclaimed_expired"] == 50
    store.close()


def test_a_database_from_before_the_cap_is_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml())
    state = tmp_path / "ds.state.db"
    with sqlite3.connect(state) as old:  # version 1: no last_seen column
        old.execute("CREATE TABLE unclaimed (serial TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID")
        old.execute("CREATE TABLE status (serial TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID")
        old.execute("INSERT INTO unclaimed VALUES ('OLD1', ?)", (json.dumps({"serial": "OLD1",
                                                                          "last_seen": "2027-01-01T00:00:00Z"}),))
        old.execute("PRAGMA user_version = 1")
    store = open_store(str(path))
    assert [e.serial for e in store.snapshot().unclaimed] == ["OLD1"]
    assert store.db.connection().execute("SELECT last_seen FROM unclaimed").fetchone() == ("2027-01-01T00:00:00Z",)
    store.close()


def test_a_log_line_is_at_most_2_kb_whatever_a_device_sends(tmp_path, caplog):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml())
    store = open_store(str(path))
    listener = Listener(store, ListenerSettings(secret=SECRET), clock=FakeClock())
    caplog.set_level(logging.INFO)
    body = b"<pnp xmlns='urn:cisco:pnp'><info>" + b"\x01\n event=forged " * 6_000  # 80 KB, malformed
    assert listener.work_request(body, "192.0.2.1", "http://x").status == 400
    body = b"<pnp xmlns='urn:cisco:pnp'><" + b"A" * 80_000 + b"/></pnp>"  # an 80 KB name the error quotes
    assert listener.work_request(body, "192.0.2.1", "http://x").status == 400
    hostname = "h\n" + "x" * 5000
    udi = protocol.Udi("C9300-24P", "V01", "STRANGE1")
    listener.work_request(messages.work_request(udi, "c1", hostname=hostname), "192.0.2.1", "http://x")
    # Whatever a future line carries (device text the protocol did not bound, a web server's request line):
    logs.event(logging.getLogger("pnp_service.listener"), logging.WARNING, "bad-work-request",
               reason="\u202e" * 10 + "é" * 80_000, detail="y" * 80_000)
    logging.getLogger("gunicorn.error").warning("Invalid request from ip=192.0.2.1: %s", "GET /" + "z" * 80_000)
    for formatter in (logs.TextFormatter(), logs.JsonFormatter()):
        lines = [formatter.format(record) for record in caplog.records]
        assert lines and all(len(line.encode()) <= logs.LINE_LIMIT and "\n" not in line for line in lines)
        assert any("cut" in line for line in lines)
    store.close()


# --------------------------------------------------------------------------- SUDI: the genuine switch behind NAT


def sudi_device(policy: sudi.Policy) -> Device:
    return Device(declared(authentication="sudi"), Settings(sudi=policy))


def test_a_failed_proof_never_holds_an_address_off_longer_than_a_minute_or_a_challenge():
    policy = sudi.Policy(anchors=("anchor",), challenge_seconds=300)  # type: ignore[arg-type]
    assert [policy.hold_off_seconds(n) for n in (1, 2, 3, 4, 10, 40)] == [15, 30, 60, 60, 60, 60]
    short = sudi.Policy(anchors=("anchor",), challenge_seconds=20)  # type: ignore[arg-type]
    assert max(short.hold_off_seconds(n) for n in range(1, 9)) == 20


def at(device: Device, address: str) -> None:
    contact = Device.contact
    device.contact = lambda: dataclasses.replace(contact(device), address=address)  # type: ignore[method-assign]


def test_challenges_sent_to_other_addresses_never_push_out_a_young_one():
    device = sudi_device(sudi.Policy(anchors=("anchor",)))  # type: ignore[arg-type]
    _, message = device.poll()
    assert message.service == "device-auth"
    genuine = device.status.sudi.challenges[0]
    for n in range(30):  # strangers from 30 other addresses ask for challenges within the answer time
        at(device, f"198.51.100.{n}")
        device.poll()
    assert genuine[2] in [c[2] for c in device.status.sudi.challenges]
    assert len({c[1] for c in device.status.sudi.challenges}) <= sudi.CHALLENGE_ADDRESSES


def test_strangers_that_never_answer_cannot_keep_the_genuine_switch_from_a_challenge():
    device = sudi_device(sudi.Policy(anchors=("anchor",)))  # type: ignore[arg-type]
    for n in range(8):  # eight addresses take every place...
        at(device, f"198.51.100.{n}")
        device.poll()
    for _ in range(10):  # ...and poll again every half minute, never answering: their challenges are not renewed
        device.wait(30)
        for n in range(8):
            at(device, f"198.51.100.{n}")
            device.poll()
        assert len(device.status.sudi.challenges) == 8
    at(device, "192.0.2.50")  # the genuine switch, doing as it is told
    _, message = device.poll()
    if message.service == "backoff":  # the strangers' challenges just renewed on expiry: at most a minute
        wait = int(message.find_text("backoff/callbackAfter/seconds") or 0) + \
            60 * int(message.find_text("backoff/callbackAfter/minutes") or 0)
        assert wait <= sudi.CHALLENGE_ANSWER_SECONDS
        device.wait(wait)
        _, message = device.poll()
    assert message.service == "device-auth"
    assert "192.0.2.50" in [c[1] for c in device.status.sudi.challenges]


def test_an_address_polling_again_is_asked_the_same_challenge():
    device = sudi_device(sudi.Policy(anchors=("anchor",)))  # type: ignore[arg-type]
    _, first = device.poll()
    device.wait(10)
    _, second = device.poll()
    assert first.find_text("deviceAuth/challenge-request") == second.find_text("deviceAuth/challenge-request")
    assert len(device.status.sudi.challenges) == 1 and device.status.sudi.challenges[0][0] == device.correlator


# --------------------------------------------------------------------------- answers from someone else


def test_a_fault_from_another_address_or_pid_counts_nothing():
    device = Device(declared(), Settings(max_attempts=2))
    device.poll()  # the genuine device holds a device-info request
    for _ in range(3):  # a stranger elsewhere, faulting blind: ignored, the request still the device's
        at(device, "198.51.100.9")
        assert device.respond(messages.fault(UDI, "Client", "x")).event == "stale"
        assert device.status.attempts == 0 and device.status.correlator
    at(device, "192.0.2.50")
    for _ in range(3):  # from its address, as another product: a refused claim, the request withdrawn, nothing counted
        assert device.respond(messages.fault(UDI_OTHER_PID, "Client", "x")).event == "refused-claim"
        assert device.status.attempts == 0 and device.status.state == "onboarding"
        device.poll()
    device.answer_device_info()
    assert device.status.step == "config-upgrade" and device.status.state == "onboarding"


def test_a_udi_without_a_pid_is_refused_like_another_pid():
    device = Device(declared(pid="C9300-24P"), udi=protocol.Udi("", "", "SN1"))
    decision, message = device.poll()
    assert message.service == "backoff" and decision.event == "refused-claim"


# --------------------------------------------------------------------------- the YANG and docs keep up


def test_the_unclaimed_cap_is_a_serve_option_with_the_documented_defaults():
    from pnp_service.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.max_unclaimed, args.unclaimed_days, args.max_image_transfers) == (10_000, 7, 64)
    assert (args.server, args.request_timeout, args.keepalive_timeout, args.send_timeout) == ("event", 30, 15, 60)



# --------------------------------------------------------------------------- polls that change nothing


def test_polls_that_change_nothing_are_answered_on_the_event_loop_and_writes_in_one_thread_pass(tmp_path, clock):
    from conftest import RunningListener
    from pnp_service import httpserver
    from pnp_service.simulator import AgentSimulator, SimulatedDevice

    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN1</serial><pid>C9300-24P</pid><hostname>h</hostname>"
                                  "<config><template>x</template></config>"))
    store = open_store(str(path), check_seconds=3600)  # the file is not looked at again: peek can answer
    running = RunningListener(store, clock, ListenerSettings(secret=SECRET), limits=httpserver.Limits(threads=1))
    try:
        assert AgentSimulator(running.url, sleep=clock.advance).run(SimulatedDevice("SN1")).outcome == "configured"
        calls = []
        update = store.update
        store.update = lambda serial, decide: calls.append(serial) or update(serial, decide)  # type: ignore[method-assign]
        update_many = store.update_many
        store.update_many = lambda updates: calls.extend(s for s, _ in updates) or update_many(updates)  # type: ignore[method-assign]
        blocked = threading.Event()
        running.server.server.pool.submit(blocked.wait, 10)  # the one app thread is busy from here on
        udi = protocol.Udi("C9300-24P", "V01", "SN1")
        connection = http.client.HTTPConnection("127.0.0.1", running.server.port, timeout=5)
        for n in range(5):  # a provisioned device polling: answered while the thread is busy
            connection.request("POST", "/pnp/WORK-REQUEST", body=messages.work_request(udi, f"q{n}"),
                               headers={"Content-Type": "application/xml"})
            assert b"backoff" in connection.getresponse().read()
        assert calls == []
        blocked.set()
        stranger = protocol.Udi("C9300-24P", "V01", "NEW1")  # its first poll records it: once, behind its answer
        connection.request("POST", "/pnp/WORK-REQUEST", body=messages.work_request(stranger, "n1"),
                           headers={"Content-Type": "application/xml"})
        assert b"backoff" in connection.getresponse().read()
        assert running.listener.sightings.flush(5)
        assert calls == ["NEW1"] and store.load("NEW1").unclaimed is not None
    finally:
        running.stop()
        store.close()


def test_peek_never_waits_for_a_look_at_the_declarations_file(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN1</serial><hostname>h</hostname><config><template>x</template></config>"))
    clock = FakeClock(0)
    from pnp_service.stores.embedded import EmbeddedStore

    store = EmbeddedStore(str(path), check_seconds=1.0)
    store.declarations.clock = clock
    store.declarations._checked = 0.0
    assert store.peek("SN1") is not None and store.peek("SN1").declaration.hostname == "h"
    clock.advance(2)  # a look at the file is due: whoever can wait does it
    assert store.peek("SN1") is None
    store.load("SN1")
    assert store.peek("SN1") is not None
    store.close()


def test_strangers_cannot_grow_a_stacks_recorded_members_without_bound(tmp_path):
    from pnp_service.provisioner import Decision, Event
    from pnp_service.stores.base import STACK_MEMBERS_MAX

    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>TOP1</serial><hostname>s</hostname><stack><members>3</members></stack>"
                                  "<config><template>x</template></config>"))
    store = open_store(str(path))
    for n in range(40):  # each claims, in its device-info, to be an active member of TOP1
        store.update(f"FAKE{n}", lambda record: Decision(b"", Event.STACK_MEMBER, member_of="TOP1"))
    rows = store.db.connection().execute("SELECT count(*) FROM stack_member").fetchone()[0]
    assert rows == STACK_MEMBERS_MAX
    store.close()
