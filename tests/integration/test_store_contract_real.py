"""The store contract (tests/store_contract.py) on a real Clixon controller: the Clixon store against the
running datastore it was written for.  Needs what tests/integration/test_clixon_controller.py needs
(``PNP_CLIXON_CONFIG``); skipped, with the reason, without it."""

from __future__ import annotations

import os
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from store_contract import StoreContract  # noqa: E402
from integration.test_clixon_controller import cli, commit, declare, pytestmark, socket_path  # noqa: E402,F401
from integration.test_clixon_controller import yang_loaded  # noqa: E402,F401 - the module's readiness check


class RealControllerHarness:
    has_controller, buffers_writes = True, None

    def __init__(self, tmp_path):
        tag = uuid.uuid4().hex[:6].upper()
        self.declared, self.stranger = f"CT{tag}", f"CX{tag}"
        self.journal = str(tmp_path / "journal")
        self.opened = []
        self.serials = [self.declared]
        declare(self.declared, hostname="contract-switch")
        verdict = commit()
        assert "error" not in verdict.lower(), verdict

    def open(self, unclaimed_policy=None):
        from pnp_service.stores.clixon import ClixonStore

        store = ClixonStore(socket_path(), journal_path=self.journal, retry_max_seconds=2,
                            unclaimed_policy=unclaimed_policy)
        self.opened.append(store)
        return store

    def restart(self):
        for store in self.opened:  # a crash: nothing flushed, its journal lock gone with the process
            store._stop.set()
            os.close(store._journal._liveness)
            store._journal._liveness = None
        self.opened.clear()
        return self.open()

    def declare(self, serial):
        self.serials.append(serial)
        declare(serial, hostname="contract-switch")
        verdict = commit()
        assert "error" not in verdict.lower(), verdict

    def settle(self, store):
        assert store.flush() is True

    def close(self):
        for store in self.opened:
            store.close()
        cli("discard", configure=True, check=False)
        listed = cli("show", "configuration", "pnp", check=False).stdout
        strangers = {word.split("<")[0] for word in listed.split("<serial>")[1:] if word.startswith(self.stranger)}
        for serial in set(self.serials) | strangers:
            for words in (("services", "pnp-device", serial), ("pnp", "device", serial), ("pnp", "unclaimed", serial)):
                cli("delete", *words, configure=True, check=False)
        commit()


class TestClixonStoreOnTheRealController(StoreContract):
    @pytest.fixture
    def harness(self, tmp_path):
        harness = RealControllerHarness(tmp_path)
        yield harness
        harness.close()
