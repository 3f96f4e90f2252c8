"""The store contract (``pnp_service.stores.base.Store``), as tests every store must pass.

A test module subclasses :class:`StoreContract` and gives it a ``harness`` fixture (:class:`Harness`): the
embedded store on a declarations file, the Clixon store on the fake controller (tests/test_store_contract.py),
and the Clixon store on a real controller (tests/integration/test_store_contract_real.py).  What a caller may
rely on is here, once; what only one store does is tested beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from typing import Protocol

import pytest

from pnp_service.model import Handoff, HandoffProgress, State, Status, Unclaimed
from pnp_service.stores.base import StatusWrite, Store, StoreBase, UnclaimedPolicy, UnknownSerial


class Harness(Protocol):
    #: A serial declared (and planned) when the harness starts; one nobody declares.
    declared: str
    stranger: str
    #: Whether the store has a controller behind it (controller_error() is then a string), and whether a write
    #: waits for settle() to reach it (None: it may or may not have, a background thread flushes).
    has_controller: bool
    buffers_writes: bool | None

    def open(self, unclaimed_policy: UnclaimedPolicy | None = None) -> Store:
        """A listener's store on this harness's source of truth (closed by the harness at the end)."""

    def restart(self) -> Store:
        """Close every store opened so far without flushing what a crash would lose, and open a new one."""

    def declare(self, serial: str) -> None:
        """Declare (and plan) ``serial`` at the source of truth, behind the open stores' backs."""

    def settle(self, store: Store) -> None:
        """Wait until the store's writes have reached the source of truth."""


def status(store: Store, serial: str, **fields) -> Status:
    work = store.load(serial).work
    return Status(state=State.ONBOARDING, revision=work.revision if work else "", step="device-info", **fields)


def writes(new: Status | None, unclaimed: Unclaimed | None = None):
    return lambda record: StatusWrite(new, unclaimed)


class StoreContract:
    """Every promise of the Store protocol, for any store a harness opens."""

    def test_both_stores_share_the_base_and_keep_the_protocol(self, harness: Harness):
        store = harness.open()
        assert isinstance(store, StoreBase)
        for method in ("load", "peek", "update", "snapshot", "reset", "problems", "counters", "write_status",
                       "refresh", "pending_writes", "controller_error", "close"):
            assert callable(getattr(store, method)), method

    def test_a_serial_nobody_knows_loads_as_an_empty_record(self, harness: Harness):
        record = harness.open().load(harness.stranger)
        assert (record.serial, record.declaration, record.work, record.status, record.unclaimed) == \
               (harness.stranger, None, None, None, None)

    def test_a_declared_serial_loads_with_its_declaration_and_work(self, harness: Harness):
        record = harness.open().load(harness.declared)
        assert record.declaration is not None and record.declaration.serial == harness.declared
        assert record.work is not None and record.work.steps, "declared devices are planned"

    def test_a_written_status_is_read_back_at_once_and_after_a_restart(self, harness: Harness):
        store = harness.open()
        written = status(store, harness.declared, correlator="c-contract")
        assert store.update(harness.declared, writes(written)).status == written
        assert store.load(harness.declared).status == written
        peeked = store.peek(harness.declared)
        assert peeked is None or peeked.status == written  # None: it cannot say without waiting
        assert [r.status for r in store.snapshot().devices if r.serial == harness.declared] == [written]
        assert harness.restart().load(harness.declared).status == written  # durable before update returned

    def test_updates_of_one_serial_never_interleave(self, harness: Harness):
        store = harness.open()
        store.update(harness.declared, writes(status(store, harness.declared)))

        def bump(record):
            return StatusWrite(dataclasses.replace(record.status, attempts=record.status.attempts + 1))

        threads = [threading.Thread(target=lambda: [store.update(harness.declared, bump) for _ in range(25)])
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert store.load(harness.declared).status.attempts == 100  # each decided on what the last recorded

    def test_a_decision_that_changes_nothing_writes_nothing(self, harness: Harness):
        store = harness.open()
        before = store.load(harness.declared)
        assert store.update(harness.declared, writes(None)).status is None
        assert store.load(harness.declared).status == before.status
        assert store.pending_writes() == 0

    def test_a_stranger_is_recorded_unclaimed_and_a_status_claims_it(self, harness: Harness):
        store = harness.open()
        store.update(harness.stranger, writes(None, Unclaimed(harness.stranger, pid="C9200L-24P", address="127.0.0.9")))
        listed = {entry.serial: entry for entry in store.snapshot().unclaimed}
        assert listed[harness.stranger].pid == "C9200L-24P"
        assert store.load(harness.stranger).unclaimed is not None
        harness.declare(harness.stranger)  # the operator declares it...
        store.refresh()
        store.update(harness.stranger, writes(status(store, harness.stranger)))  # ...and it calls again
        assert store.load(harness.stranger).unclaimed is None
        assert harness.stranger not in {entry.serial for entry in store.snapshot().unclaimed}

    def test_update_many_answers_each_update_in_order_and_one_failure_spoils_no_other(self, harness: Harness):
        store = harness.open()
        written = status(store, harness.declared)

        def broken(record):
            raise ValueError("a decide that fails")

        results = store.update_many([
            (harness.stranger, writes(None, Unclaimed(harness.stranger, pid="C9200L-24P"))),
            (harness.declared, broken),
            (harness.declared, writes(written)),
        ])
        assert isinstance(results[1], ValueError) and results[2].status == written
        assert store.load(harness.declared).status == written
        assert store.load(harness.stranger).unclaimed is not None
        assert harness.restart().load(harness.stranger).unclaimed is not None  # durable before it returned

    def test_strangers_cannot_grow_the_unclaimed_table_past_its_cap(self, harness: Harness):
        store = harness.open(UnclaimedPolicy(max_entries=5))
        now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        for number in range(9):
            serial = f"{harness.stranger}{number}"
            seen = now + dt.timedelta(seconds=number)
            store.update(serial, writes(None, Unclaimed(serial, pid="C9200L-24P", first_seen=seen, last_seen=seen)))
        harness.settle(store)
        kept = {entry.serial for entry in store.snapshot().unclaimed}
        assert len(kept) <= 5 and f"{harness.stranger}8" in kept  # the longest unseen go first
        assert store.counters()["unclaimed_dropped"] >= 4

    def test_write_status_writes_what_the_change_returns_and_nothing_for_none(self, harness: Harness):
        store = harness.open()
        handed = status(store, harness.declared, handoff=HandoffProgress(Handoff.PENDING, "r1"))
        assert store.write_status(harness.declared, lambda record: handed) == handed
        assert store.load(harness.declared).status == handed
        assert store.write_status(harness.declared, lambda record: None) is None
        assert store.load(harness.declared).status == handed

    def test_reset_forgets_a_status_and_refuses_a_serial_nobody_declared(self, harness: Harness):
        store = harness.open()
        store.update(harness.declared, writes(status(store, harness.declared)))
        harness.settle(store)
        with pytest.raises(UnknownSerial):
            store.reset(harness.stranger)
        assert harness.declared in store.reset(harness.declared)
        store.refresh()
        assert store.load(harness.declared).status is None

    def test_refresh_sees_a_declaration_made_at_the_source(self, harness: Harness):
        store = harness.open()
        newcomer = harness.stranger + "N"
        assert store.load(newcomer).declaration is None
        harness.declare(newcomer)
        store.refresh()
        assert store.load(newcomer).declaration is not None

    def test_pending_writes_reach_the_source_and_the_controller_is_reported(self, harness: Harness):
        store = harness.open()
        store.update(harness.declared, writes(status(store, harness.declared)))
        if harness.buffers_writes is not None:
            assert store.pending_writes() == (1 if harness.buffers_writes else 0)
        harness.settle(store)
        assert store.pending_writes() == 0
        error = store.controller_error()
        assert (error == "") if harness.has_controller else (error is None)
        assert not any("controller" in problem for problem in store.problems())

    def test_counters_and_problems_are_there_from_the_start(self, harness: Harness):
        store = harness.open()
        assert set(store.counters()) >= {"unclaimed_dropped", "unclaimed_expired"}
        assert store.problems() == ()

    def test_a_closed_store_has_made_its_writes_durable(self, harness: Harness):
        store = harness.open()
        written = status(store, harness.declared, correlator="c-closed")
        store.update(harness.declared, writes(written))
        store.close()
        assert harness.open().load(harness.declared).status == written

