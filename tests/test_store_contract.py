"""The store contract (tests/store_contract.py) run against both stores: the embedded one on a declarations file,
the Clixon one on the fake controller.  tests/integration/test_store_contract_real.py runs it on a real one."""

from __future__ import annotations

import os

import pytest

from conftest import datastore_xml, open_store
from fake_controller import FakeController, declare
from pnp_service.stores.clixon import ClixonStore
from store_contract import StoreContract

DEVICE = ("<serial>{serial}</serial><pid>C9300-24P</pid><hostname>{serial}-sw</hostname>"
          "<config><template>hostname {{{{ hostname }}}}</template></config>")


class EmbeddedHarness:
    declared, stranger, has_controller, buffers_writes = "SN1", "STRANGER1", False, False

    def __init__(self, tmp_path):
        self.path = tmp_path / "ds.xml"
        self.serials = [self.declared]
        self._write()
        self.opened = []

    def _write(self):
        self.path.write_text(datastore_xml(*(DEVICE.format(serial=serial) for serial in self.serials)))

    def open(self, unclaimed_policy=None):
        store = open_store(str(self.path), unclaimed_policy=unclaimed_policy)
        self.opened.append(store)
        return store

    def restart(self):
        for store in self.opened:
            store.close()
        return self.open()

    def declare(self, serial):
        self.serials.append(serial)
        self._write()

    def settle(self, store):
        pass

    def close(self):
        for store in self.opened:
            store.close()


class FakeControllerHarness:
    declared, stranger, has_controller, buffers_writes = "SN1", "STRANGER1", True, True

    def __init__(self, tmp_path):
        self.controller = FakeController()
        self.journal = str(tmp_path / "journal")
        self.opened = []

    def open(self, unclaimed_policy=None):
        store = ClixonStore("/fake.sock", journal_path=self.journal, session_factory=self.controller.session,
                            start_threads=False, unclaimed_policy=unclaimed_policy)
        self.opened.append(store)
        return store

    def restart(self):
        for store in self.opened:  # a crash: nothing flushed or closed, its journal lock gone with the process
            os.close(store._journal._liveness)
            store._journal._liveness = None
        self.opened.clear()
        return self.open()

    def declare(self, serial):
        declare(self.controller, serial, f"{serial}-sw")

    def settle(self, store):
        assert store.flush() is True

    def close(self):
        for store in self.opened:
            store.close()


class TestEmbeddedStore(StoreContract):
    @pytest.fixture
    def harness(self, tmp_path):
        harness = EmbeddedHarness(tmp_path)
        yield harness
        harness.close()


class TestClixonStoreOnTheFakeController(StoreContract):
    @pytest.fixture
    def harness(self, tmp_path):
        harness = FakeControllerHarness(tmp_path)
        yield harness
        harness.close()
