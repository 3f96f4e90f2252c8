"""The embedded store: the declarations file is input only, the state lives in SQLite, every process agrees on plans."""

from __future__ import annotations

import os
import shutil
import stat
import time

import pytest

from conftest import datastore_xml, open_store
from pnp_service.model import Status, Unclaimed
from pnp_service.provisioner import Decision, Event
from pnp_service.stores.base import StoreError, UnknownSerial
from pnp_service.stores.embedded import default_state_path

DEVICE = "<serial>SN1</serial><pid>C9300-24P</pid><hostname>sw1</hostname><config><template>hostname {{ hostname }}</template></config>"
FILE_DEVICE = "<serial>SN2</serial><hostname>sw2</hostname><config><template-file>access.j2</template-file></config>"


def write(path, text):
    with open(path, "w") as handle:
        handle.write(text)


def change(status=None, unclaimed=None):
    return lambda record: Decision(b"", Event.REQUEST, status=status, unclaimed=unclaimed)


def declare(tmp_path, *bodies) -> str:
    path = str(tmp_path / "ds.xml")
    write(path, datastore_xml(*bodies))
    return path


def test_declarations_are_planned_and_the_file_is_never_written(example_path):
    before = open(example_path, "rb").read()
    mtime = os.stat(example_path).st_mtime_ns
    store = open_store(example_path)
    record = store.load("FOC2001X0AB")
    assert [s.type for s in record.work.steps] == ["device-info", "config-upgrade"]
    store.update("FOC2001X0AB", change(status=Status(state="onboarding", attempts=2)))
    store.update("NEW1", change(unclaimed=Unclaimed("NEW1", pid="C9200L")))
    store.close()
    assert open(example_path, "rb").read() == before and os.stat(example_path).st_mtime_ns == mtime


def test_state_lives_in_a_private_database_beside_the_file_and_survives_a_restart(example_path):
    store = open_store(example_path)
    store.update("FOC2001X0AB", change(status=Status(state="onboarding", attempts=2)))
    store.close()
    database = default_state_path(example_path)
    assert database == example_path.replace(".xml", ".state.db")
    assert stat.S_IMODE(os.stat(database).st_mode) == 0o600
    assert open_store(example_path).load("FOC2001X0AB").status.attempts == 2


def test_an_editor_save_a_checkout_or_a_copy_of_the_file_changes_no_state(example_path, tmp_path):
    store = open_store(example_path)
    store.update("FOC2001X0AB", change(status=Status(state="onboarding", attempts=1)))
    store.update("STRANGER", change(unclaimed=Unclaimed("STRANGER", pid="C9200L")))
    text = open(example_path).read()
    write(example_path, text.replace("<hostname>access-sw-02", "<hostname>access-sw-99"))  # an editor saves
    os.replace(example_path, example_path + ".bak")  # git checkout: a new file in its place
    write(example_path, text)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(example_path, copy / "ds.xml")  # a copied file carries no state
    assert open_store(str(copy / "ds.xml")).load("FOC2001X0AB").status is None
    assert store.load("FOC2001X0AB").status.attempts == 1
    assert store.load("STRANGER").unclaimed.pid == "C9200L"


def test_status_of_a_store_opened_read_only_writes_nothing(example_path):
    store = open_store(example_path, read_only=True)
    snapshot = store.snapshot()
    assert [r.serial for r in snapshot.devices] == ["FOC2001X0AB", "FOC2001X0CD"]
    assert not os.path.exists(default_state_path(example_path))  # not even the database is created
    with pytest.raises(StoreError, match="read-only"):
        store.update("FOC2001X0AB", change(status=Status(state="error")))


def test_a_missing_file_is_an_error_and_creates_nothing(tmp_path):
    with pytest.raises(StoreError, match="no such file.*pnp-service init"):
        open_store(str(tmp_path / "typo.xml"))
    assert os.listdir(tmp_path) == []


def test_a_missing_folder_is_an_error_not_a_traceback(tmp_path):
    with pytest.raises(StoreError, match="no such file"):
        open_store(str(tmp_path / "nowhere" / "ds.xml"))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("<config><template>", "<imgae/><config><template>", 1), 'Node "imgae" not found'),
        (lambda t: t.replace("SN1", "S N1"), "Unsatisfied pattern"),
        (lambda t: t.replace('xmlns="urn:pnp-service:pnp"', 'xmlns="urn:pnp-service:pnpx"'), "urn:pnp-service:pnpx"),
        (lambda t: t.replace(' xmlns="http://clicon.org/controller"', ""), "must be in the controller's namespace"),
        (lambda t: t.replace("</template>", "</template><apply-to>startup-config</apply-to>"), "Invalid enumeration"),
        (lambda t: t.replace("</pnp-device>", "</pnp-device>" + t.split("<services xmlns=\"http://clicon.org/controller\">")[1].split("</services>")[0]), "Duplicate instance"),
        (lambda t: t.replace("</config></pnp-device>", "</config><image><version>1</version><url>http://x.invalid/i.bin</url><md5>ABCDEF</md5></image></pnp-device>"), "does not conform"),
        (lambda t: t.replace("</config></pnp-device>", "</config><image><version>1</version><url>http://x.invalid/i.bin</url><md5>" + "a" * 32 + "</md5><reload-wait>5</reload-wait></image></pnp-device>"), "range"),
        (lambda t: t.replace("</config></pnp-device>", "</config><image><url>http://x.invalid/i.bin</url><md5>" + "a" * 32 + "</md5></image></pnp-device>"), 'Mandatory node "version"'),
        (lambda t: t.replace("</config>\n", ""), "not well-formed"),
    ],
    ids=["misspelled", "serial-with-space", "wrong-namespace", "services-without-xmlns", "bad-enum", "duplicate-serial",
         "uppercase-md5", "reload-wait-out-of-range", "missing-mandatory", "malformed"],
)
def test_typos_are_refused_at_start_with_the_file_line_and_path(tmp_path, edit, message):
    path = declare(tmp_path, DEVICE)
    bad = edit(open(path).read())
    assert bad != open(path).read()
    write(path, bad)
    with pytest.raises(StoreError, match=message) as raised:
        open_store(path)
    assert path in str(raised.value)


def test_an_invalid_live_edit_keeps_the_last_valid_declarations_and_says_why(tmp_path):
    path = declare(tmp_path, DEVICE)
    store = open_store(path)
    revision = store.load("SN1").work.revision
    write(path, datastore_xml(DEVICE.replace("<pid>", "<pdi>").replace("</pid>", "</pdi>")))
    assert store.load("SN1").work.revision == revision  # still served
    (problem,) = store.problems()
    assert "pdi" in problem and "ds.xml:3" in problem and "last valid" in problem
    write(path, datastore_xml(DEVICE.replace("sw1", "sw7")))
    assert store.load("SN1").work.revision != revision and store.problems() == ()


def test_no_hostname_is_an_error_that_names_the_variable(tmp_path):
    path = declare(tmp_path, DEVICE.replace("<hostname>sw1</hostname>", ""))
    record = open_store(path).load("SN1")
    assert record.work is None and "'hostname' is undefined" in record.planning_error


def test_a_template_error_leaves_no_work_and_writes_no_status(tmp_path):
    path = declare(tmp_path, DEVICE.replace("{{ hostname }}", "{{ missing_var }}"))
    store = open_store(path)
    record = store.load("SN1")
    assert record.work is None and record.status is None and "missing_var" in record.planning_error
    assert store.snapshot().devices[0].planning_error


def test_a_template_file_edit_is_seen_by_every_listener_and_they_agree(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "access.j2").write_text("hostname {{ hostname }}\n")
    path = declare(tmp_path, FILE_DEVICE)
    one, two = open_store(path), open_store(path)
    first = one.load("SN2").work.revision
    assert two.load("SN2").work.revision == first
    time.sleep(0.01)
    (templates / "access.j2").write_text("hostname {{ hostname }}\nip domain name example.invalid\n")
    assert one.load("SN2").work.revision == two.load("SN2").work.revision != first
    assert open_store(path, read_only=True).load("SN2").work.revision == one.load("SN2").work.revision
    assert "ip domain name" in one.load("SN2").work.steps[-1].params["config"]


def test_a_template_file_that_appears_later_is_picked_up(tmp_path):
    (tmp_path / "templates").mkdir()
    path = declare(tmp_path, FILE_DEVICE)
    store = open_store(path)
    assert "not found" in store.load("SN2").planning_error
    (tmp_path / "templates" / "access.j2").write_text("hostname {{ hostname }}\n")
    assert store.load("SN2").work is not None


def test_plans_are_one_per_declared_device_whatever_the_number_of_edits(tmp_path):
    path = declare(tmp_path, DEVICE)
    store = open_store(path)
    for number in range(20):
        write(path, datastore_xml(DEVICE.replace("sw1", f"sw{number}")))
        store.load("SN1")
    assert len(store.declarations.current().plans) == 1


def test_a_removed_declaration_reads_removed_and_then_becomes_one_unclaimed_row(tmp_path):
    path = declare(tmp_path, DEVICE)
    store = open_store(path)
    store.update("SN1", change(status=Status(state="provisioned")))
    write(path, datastore_xml())
    record = store.load("SN1")
    assert record.declaration is None and record.work is None and record.status.state == "provisioned"
    store.update("SN1", change(unclaimed=Unclaimed("SN1", pid="C9300-24P")))  # it calls in again
    assert store.load("SN1").status is None
    snapshot = store.snapshot()
    assert snapshot.devices == () and [u.serial for u in snapshot.unclaimed] == ["SN1"]


def test_the_unclaimed_entry_goes_when_the_device_gets_a_status(example_path):
    store = open_store(example_path)
    store.update("FOC2001X0AB", change(unclaimed=Unclaimed("FOC2001X0AB")))
    store.update("FOC2001X0AB", change(status=Status(state="onboarding")))
    assert store.load("FOC2001X0AB").unclaimed is None and store.snapshot().unclaimed == ()


def test_reset_clears_a_status_and_refuses_serials_it_does_not_know(example_path):
    store = open_store(example_path)
    assert "nothing to reset" in store.reset("FOC2001X0AB")
    store.update("FOC2001X0AB", change(status=Status.from_flat(state="error", error_code="x")))
    assert "starts over" in store.reset("FOC2001X0AB")
    assert store.load("FOC2001X0AB").status is None
    with pytest.raises(UnknownSerial, match="not declared"):
        store.reset("NOBODY")
    store.update("STRANGER", change(unclaimed=Unclaimed("STRANGER")))
    with pytest.raises(UnknownSerial, match="unclaimed"):
        store.reset("STRANGER")


def test_two_stores_share_one_database(example_path):
    one, two = open_store(example_path), open_store(example_path)
    one.update("FOC2001X0AB", change(status=Status(state="onboarding", attempts=1)))
    assert two.load("FOC2001X0AB").status.attempts == 1
    two.update("FOC2001X0CD", change(status=Status(state="onboarding", attempts=2)))
    assert one.load("FOC2001X0CD").status.attempts == 2


def test_a_decision_is_taken_again_inside_the_transaction(example_path):
    """Two stores decide on the same record at once: the second decides on what the first recorded."""
    one, two = open_store(example_path), open_store(example_path)
    seen = []

    def bump(store):
        def decide(record):
            attempts = (record.status.attempts if record.status else 0) + 1
            seen.append(attempts)
            return Decision(b"", Event.RETRY, status=Status(state="onboarding", attempts=attempts))
        return decide

    one.update("FOC2001X0AB", bump(one))
    two.update("FOC2001X0AB", bump(two))
    assert one.load("FOC2001X0AB").status.attempts == 2


def test_a_decision_that_fails_inside_a_batch_fails_alone(example_path):
    import threading

    store = open_store(example_path)
    barrier = threading.Barrier(4)
    outcomes = {}

    def run(serial, broken):
        def decide(record):
            if broken and record.status is not None:  # only inside the transaction
                raise RuntimeError("broken decision")
            return Decision(b"", Event.REQUEST, status=Status(state="onboarding", step=serial))
        barrier.wait()
        try:
            store.update(serial, decide)
            outcomes[serial] = "ok"
        except RuntimeError:
            outcomes[serial] = "failed"

    store.update("B0", change(status=Status(state="onboarding")))
    threads = [threading.Thread(target=run, args=(f"B{i}", i == 0)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert outcomes == {"B0": "failed", "B1": "ok", "B2": "ok", "B3": "ok"}
    assert store.load("B1").status.step == "B1" and store.load("B0").status.step == ""


def test_a_device_declared_a_moment_ago_is_served_at_its_first_poll_not_told_it_is_unknown(tmp_path):
    from pnp_service.listener import Listener, ListenerSettings
    from pnp_service.simulator import messages
    from pnp_service import protocol
    from pnp_service.stores.embedded import EmbeddedStore
    from conftest import SECRET, FakeClock

    body = "<serial>{sn}</serial><hostname>{sn}</hostname><config><template>x</template></config>"
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(body.format(sn="OLD1")))
    store = EmbeddedStore(str(path), check_seconds=3600)  # the file would not be looked at again for an hour
    listener = Listener(store, ListenerSettings(secret=SECRET), clock=FakeClock())
    path.write_text(datastore_xml(body.format(sn="OLD1"), body.format(sn="NEW1")))  # the operator adds a device
    udi = protocol.Udi("C9300-24P", "V01", "NEW1")
    for quick in (True, False):
        reply = (listener.quick_work_request if quick else listener.work_request)(
            messages.work_request(udi, f"c{quick}"), "192.0.2.1", "http://x")
        if callable(reply):
            reply = reply()
        assert b"device-info" in reply.body, reply.body
    assert store.load("NEW1").unclaimed is None
    store.close()


def test_status_and_reset_open_an_invalid_file_but_never_a_missing_one(tmp_path):
    # ``tolerate_invalid`` is what ``status`` and ``reset`` open the store with: they work on a broken file...
    path = declare(tmp_path, DEVICE)
    write(path, datastore_xml(DEVICE.replace("<pid>", "<pdi>").replace("</pid>", "</pdi>")))
    with pytest.raises(StoreError, match="pdi"):
        open_store(path)
    store = open_store(path, tolerate_invalid=True)
    (problem,) = store.problems()
    assert "pdi" in problem and store.load("SN1").declaration is None
    # ...but a path that is not there is a typo in the command, said as such.
    with pytest.raises(StoreError, match="no such file"):
        open_store(str(tmp_path / "typo.xml"), tolerate_invalid=True)


def test_refresh_reads_an_edit_at_once_whatever_the_check_interval(tmp_path):
    path = declare(tmp_path, DEVICE)
    store = open_store(path, check_seconds=3600)
    assert [d.serial for d in store.snapshot().devices] == ["SN1"]
    write(path, datastore_xml(DEVICE, DEVICE.replace("SN1", "SN3").replace("sw1", "sw3")))
    assert [d.serial for d in store.snapshot().devices] == ["SN1"]  # not looked at yet: checked a moment ago
    store.refresh()
    assert [d.serial for d in store.snapshot().devices] == ["SN1", "SN3"]


def test_a_changed_declaration_reads_pending_until_the_device_has_it(tmp_path):
    from pnp_service import views

    path = declare(tmp_path, DEVICE)
    store = open_store(path)
    revision = store.load("SN1").work.revision
    store.update("SN1", change(status=Status(state="provisioned", revision=revision)))
    assert views.shown_state(store.load("SN1")) == "provisioned"
    write(path, datastore_xml(DEVICE.replace("sw1", "sw1-renamed")))
    record = store.load("SN1")
    assert record.work.revision != revision and views.shown_state(record) == "pending"
    assert views.totals(store.snapshot()).startswith("1 declared: 1 pending;")
    store.update("SN1", change(status=Status(state="provisioned", revision=record.work.revision)))
    assert views.shown_state(store.load("SN1")) == "provisioned"


def test_the_hand_off_is_a_column_of_the_status_table_and_a_metric(tmp_path):
    from pnp_service import views
    from pnp_service.metrics import Metrics
    from pnp_service.model import HandoffProgress

    path = declare(tmp_path, DEVICE)
    store = open_store(path)
    failed = HandoffProgress(state="failed", message="connection refused by 192.0.2.1:830")
    store.update("SN1", change(status=Status(state="provisioned", revision=store.load("SN1").work.revision,
                                             handoff=failed)))
    assert views.row(store.load("SN1"))["handoff"] == "failed: connection refused by 192.0.2.1:830"
    assert "HANDOFF" in views.table(store.snapshot()).splitlines()[0]
    text = Metrics(store, snapshot_seconds=0).render().decode()
    assert 'pnp_handoffs{state="failed"} 1.0' in text and 'pnp_handoffs{state="managed"} 0.0' in text


def test_a_removed_row_is_forgotten_once_its_device_is_unseen_for_the_policys_days(tmp_path):
    import datetime as dt

    from pnp_service import views

    second = DEVICE.replace("SN1", "SN2")
    path = declare(tmp_path, DEVICE, second)
    store = open_store(path)
    now = dt.datetime.now(dt.timezone.utc)
    store.update("SN1", change(status=Status(state="provisioned", last_contact=now - dt.timedelta(days=8))))
    store.update("SN2", change(status=Status(state="provisioned", last_contact=now - dt.timedelta(days=1))))
    assert store.load("SN1").status is not None  # declared: kept however long unseen
    write(path, datastore_xml())
    store.refresh()
    assert store.load("SN1").status is None  # gone for more than 7 days: its removed row goes
    assert views.shown_state(store.load("SN2")) == "removed"  # seen yesterday: still shown
