"""Strangers' sightings written behind their answers (pnp_service/sightings.py)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from conftest import datastore_xml, open_store
from pnp_service.model import Unclaimed
from pnp_service.sightings import SightingWriter
from pnp_service.stores.base import StoreBase, StoreUnavailable

SEEN = dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc)


def sighting(serial: str, seconds: int = 0) -> Unclaimed:
    seen = SEEN + dt.timedelta(seconds=seconds)
    return Unclaimed(serial, f"PID:X,VID:V1,SN:{serial}", "X", "Switch", "192.0.2.9", seen, seen)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "ds.xml"
    path.write_text(datastore_xml("<serial>SN1</serial><hostname>h</hostname><config><template>x</template></config>"))
    opened = open_store(str(path))
    yield opened
    opened.close()


class HeldStore(StoreBase):
    """The store, whose writes wait until released: a disk (or a controller) that is slow."""

    def __init__(self, store):
        self.store = store
        self.entered = threading.Event()
        self.release = threading.Event()
        self.written: list[str] = []

    def update(self, serial, decide):
        self.entered.set()
        assert self.release.wait(10)
        self.written.append(serial)
        return self.store.update(serial, decide)


def test_a_sighting_is_queued_at_once_and_written_behind(store):
    held = HeldStore(store)
    writer = SightingWriter(held)
    assert writer.record("NEW1", sighting("NEW1"))  # returns while the write is held
    assert held.entered.wait(5)
    assert not writer.flush(0.05) and store.load("NEW1").unclaimed is None
    held.release.set()
    assert writer.flush(5)
    assert store.load("NEW1").unclaimed.last_seen == SEEN


def test_at_most_capacity_sightings_wait_and_a_dropped_one_is_counted(store):
    held = HeldStore(store)
    dropped = []
    writer = SightingWriter(held, capacity=2, on_dropped=lambda: dropped.append(1))
    writer.record("A", sighting("A"))
    assert held.entered.wait(5)  # A is being written; B and C wait
    assert writer.record("B", sighting("B")) and writer.record("C", sighting("C"))
    assert not writer.record("D", sighting("D")) and dropped == [1]
    assert writer.record("B", sighting("B", 5))  # the same serial again takes no room: its newest sighting waits
    assert writer.waiting() == 2 and dropped == [1]
    held.release.set()
    assert writer.flush(5)
    assert held.written == ["A", "B", "C"]
    assert store.load("B").unclaimed.last_seen == SEEN + dt.timedelta(seconds=5)
    assert store.load("D").unclaimed is None


def test_a_serial_declared_before_its_sighting_is_written_is_not_recorded(store):
    writer = SightingWriter(store)
    writer.record("SN1", sighting("SN1"))
    assert writer.flush(5)
    assert store.load("SN1").unclaimed is None and store.load("SN1").declaration is not None


def test_the_writer_survives_a_store_that_is_down(store):
    class DownOnce(StoreBase):
        def __init__(self):
            self.calls = 0

        def update(self, serial, decide):
            self.calls += 1
            if self.calls == 1:
                raise StoreUnavailable("the controller is not reachable")
            return store.update(serial, decide)

    writer = SightingWriter(DownOnce())
    writer.record("LOST", sighting("LOST"))
    assert writer.flush(5)
    writer.record("NEXT", sighting("NEXT"))
    assert writer.flush(5)
    assert store.load("LOST").unclaimed is None and store.load("NEXT").unclaimed is not None
