"""The summary ``show pnp`` reads in the controller's CLI (/pnp/summary): what it says, what each write changes."""

from __future__ import annotations

import datetime as dt

from lxml import etree

from conftest import datastore_xml, open_store
from pnp_service.model import NETCONF_NS, HandoffProgress, LastError, Status, q
from pnp_service.provisioner import Decision, Event
from pnp_service.stores.base import StoreUnavailable
from pnp_service.summary import SummaryWriter

DEVICES = ["<serial>SN1</serial><hostname>sw1</hostname><config><template>hostname {{ hostname }}</template></config>",
           "<serial>SN2</serial><hostname>sw2</hostname><config><template>hostname {{ hostname }}</template></config>"]
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.timezone.utc)


def status_write(status):
    return lambda record: Decision(b"", Event.REQUEST, status=status)


class Recorder:
    """The controller as the writer sees it: each commit's edit, or a refusal while ``busy``."""

    def __init__(self):
        self.edits: list[etree._Element] = []
        self.busy = False

    def __call__(self, edit: str) -> None:
        if self.busy:
            raise StoreUnavailable("lock-denied: candidate has already been modified")
        self.edits.append(etree.fromstring(edit))

    def last(self) -> etree._Element:
        summary = self.edits[-1].find(q("summary"))
        assert summary is not None
        return summary


def devices(summary) -> dict[str, tuple[str | None, dict[str, str]]]:
    found = {}
    for device in summary.iterfind(q("device")):
        leaves = {etree.QName(leaf).localname: leaf.text for leaf in device}
        found[leaves.pop("serial")] = (device.get(f"{{{NETCONF_NS}}}operation"), leaves)
    return found


def setup(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml(*DEVICES))
    store = open_store(str(path))
    recorder = Recorder()
    return path, store, recorder, SummaryWriter(store.snapshot, recorder, clock=lambda: NOW)


def test_the_first_write_replaces_the_whole_summary_with_counts_and_a_row_each(tmp_path):
    _, store, recorder, writer = setup(tmp_path)
    assert writer.write_once() is True
    summary = recorder.last()
    assert summary.get(f"{{{NETCONF_NS}}}operation") == "replace"  # rows an earlier run left behind go
    assert summary.findtext(q("declared")) == "2" and summary.findtext(q("planned")) == "2"
    assert summary.find(q("error")) is None and summary.findtext(q("unclaimed")) == "0"  # no count of nothing
    assert summary.findtext(q("updated")) == "2026-12-04T12:00:00Z"
    assert devices(summary) == {"SN1": (None, {"state": "planned", "hostname": "sw1"}),
                                "SN2": (None, {"state": "planned", "hostname": "sw2"})}


def test_only_what_changed_is_written_and_nothing_when_nothing_did(tmp_path):
    path, store, recorder, writer = setup(tmp_path)
    writer.write_once()
    assert writer.write_once() is False and len(recorder.edits) == 1
    revision = store.load("SN1").work.revision
    store.update("SN1", status_write(Status(state="provisioned", revision=revision,
                                            handoff=HandoffProgress(state="managed"))))
    assert writer.write_once() is True
    summary = recorder.last()
    assert summary.get(f"{{{NETCONF_NS}}}operation") is None
    assert devices(summary) == {"SN1": ("replace", {"state": "provisioned", "hostname": "sw1", "handoff": "managed"})}
    assert summary.findtext(q("provisioned")) == "1" and summary.findtext(q("handoff-managed")) == "1"
    path.write_text(datastore_xml(DEVICES[0].replace("sw1", "sw1-new")))  # SN1 changed, SN2 gone
    writer.write_once()
    assert devices(recorder.last()) == {"SN1": ("replace", {"state": "pending", "hostname": "sw1-new",
                                                            "handoff": "managed"}),
                                        "SN2": ("remove", {})}
    assert recorder.last().findtext(q("pending")) == "1" and recorder.last().findtext(q("declared")) == "1"
    gone = recorder.last().find(q("provisioned"))  # no device reads provisioned any more: the count goes
    assert gone is not None and gone.get(f"{{{NETCONF_NS}}}operation") == "remove"


def test_an_error_row_says_what_to_do_and_device_text_cannot_break_it(tmp_path):
    _, store, recorder, writer = setup(tmp_path)
    failed = Status(state="error", step="config-upgrade", error=LastError(code="agent-error",
                                                                         message="line 3\x1b[2J rejected " + "x" * 400))
    store.update("SN2", status_write(failed))
    writer.write_once()
    _, row = devices(recorder.last())["SN2"]
    assert row["state"] == "error" and row["step"] == "config-upgrade"
    assert "\x1b" not in row["error"] and "\\x1b" in row["error"] and len(row["error"]) <= 160
    assert row["error"].startswith("agent-error: line 3")


def test_a_busy_controller_gets_the_same_summary_at_the_next_turn(tmp_path):
    _, store, recorder, writer = setup(tmp_path)
    recorder.busy = True
    assert writer.write_once() is False and recorder.edits == []
    recorder.busy = False
    assert writer.write_once() is True
    assert recorder.last().get(f"{{{NETCONF_NS}}}operation") == "replace"  # still the first, whole write


def test_the_summary_is_valid_in_the_yangs_shape(tmp_path):
    from test_yang import yanglint

    _, store, recorder, writer = setup(tmp_path)
    store.update("SN2", status_write(Status(state="error", error=LastError(code="x", message="y"))))
    writer.write_once()
    edit = recorder.edits[-1]
    for element in edit.iter():
        element.attrib.pop(f"{{{NETCONF_NS}}}operation", None)
    out = tmp_path / "summary.xml"
    out.write_bytes(etree.tostring(edit))
    result = yanglint(str(out))
    assert result.returncode == 0, result.stderr


def test_a_slow_controller_gets_the_summary_less_often(tmp_path):
    import time

    _, store, recorder, writer = setup(tmp_path)
    assert writer.next_wait() == writer.every_seconds
    slow = recorder.__call__

    def slow_commit(edit):
        slow(edit)
        time.sleep(0.05)

    writer._commit = slow_commit
    writer.write_once()
    assert writer.next_wait() >= 10 * 0.05 and writer.next_wait() >= writer.every_seconds
    writer.every_seconds = 0.1
    assert writer.next_wait() >= 0.5  # ten times the last commit, not the shorter interval
