"""The store contract, shared by the embedded store and the Clixon store, and the rules both follow.

A store holds, per serial: the operator's declaration, the planned work, the
status the listener records and, for a serial nobody declared, its unclaimed
entry.  Both stores implement :class:`Store` exactly as documented there; the
rules they share (a status and an unclaimed entry never coexist; many callers'
durable writes batched into one) are written once, here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from typing import Callable, Generic, Mapping, Protocol, TypeVar

from ..model import Declaration, DeviceRecord, Status, Unclaimed, format_time

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """The store cannot be used as configured; the message says what to fix."""


class StoreUnavailable(StoreError):
    """The store cannot take a write right now (controller down or busy, database locked): retry later."""


class UnknownSerial(StoreError):
    """An operator named a serial the store knows nothing about."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every declared device, every device with a status, and every unclaimed one: for ``pnp-service status``."""

    devices: tuple[DeviceRecord, ...]
    unclaimed: tuple[Unclaimed, ...]
    problems: tuple[str, ...] = ()
    #: False when the declarations could not be read (an invalid file): records carry statuses only.
    declarations_known: bool = True


class Decided(Protocol):
    """What a decision must tell the store (``provisioner.Decision`` is one)."""

    @property
    def status(self) -> Status | None: ...

    @property
    def unclaimed(self) -> Unclaimed | None: ...

    @property
    def recheck(self) -> bool: ...

    @property
    def member_of(self) -> str: ...


D = TypeVar("D", bound=Decided)


@dataclasses.dataclass(frozen=True)
class StatusWrite:
    """A decision that writes a status, or nothing (None): what :meth:`StoreBase.write_status` records."""

    status: Status | None = None
    unclaimed: Unclaimed | None = None
    recheck: bool = False
    member_of: str = ""


class StoreBase:
    """What both stores implement the same way on top of :meth:`Store.update`."""

    def update(self, serial: str, decide: Callable[[DeviceRecord], D]) -> D:  # pragma: no cover - each store's own
        raise NotImplementedError

    def write_status(self, serial: str, change: Callable[[DeviceRecord], Status | None]) -> Status | None:
        """Write ``change(record)`` as the status of ``serial`` (None: write nothing), under the same rules as a
        poll's decision; returns what was written.  For writers that are not the provisioner (the hand-off)."""
        return self.update(serial, lambda record: StatusWrite(change(record))).status

    def update_many(self, updates: list[tuple[str, Callable[[DeviceRecord], D]]]) -> list[D | Exception]:
        """Each ``(serial, decide)`` as :meth:`update`: its decision, or the exception its update raised."""
        results: list[D | Exception] = []
        for serial, decide in updates:
            try:
                results.append(self.update(serial, decide))
            except Exception as exc:  # noqa: BLE001 - reported per update, as the caller asked
                results.append(exc)
        return results


@dataclasses.dataclass(frozen=True)
class UnclaimedPolicy:
    """What a store keeps of devices nobody declared: anyone on the PnP VLAN can make up serials.

    At most ``max_entries`` (the longest unseen are forgotten first to make room for a newcomer), and none unseen
    for ``keep_days`` (counted from the newest sighting the store records, so a listener's clock decides).
    """

    max_entries: int = 10_000
    keep_days: int = 7

    def expired_before(self, newest: dt.datetime) -> str:
        """The ``last-seen`` text before which an entry is forgotten (times as the model formats them sort)."""
        return format_time(newest - dt.timedelta(days=self.keep_days))


#: Switches recorded as members of one declared stack (a stack has at most 8): more are strangers' claims, refused.
STACK_MEMBERS_MAX = 8


class ForgottenLog:
    """One warning when unclaimed devices start being forgotten to make room, then at most one a minute with the count:
    a flood of made-up serials must not become a flood of log lines."""

    def __init__(self, policy: UnclaimedPolicy, every_seconds: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.policy, self.every_seconds, self.clock = policy, every_seconds, clock
        self._since = 0
        self._logged = float("-inf")
        self._lock = threading.Lock()

    def add(self, dropped: int) -> None:
        if not dropped:
            return
        with self._lock:
            self._since += dropped
            if self.clock() - self._logged < self.every_seconds:
                return
            count, self._since, self._logged = self._since, 0, self.clock()
        log.warning("%d unclaimed devices forgotten to stay within %d (--max-unclaimed; the longest unseen go first; "
                    "pnp_unclaimed_dropped_total counts them all)", count, self.policy.max_entries)


@dataclasses.dataclass(frozen=True)
class Change:
    """What one decision records for one serial, and the rule of what it replaces.

    The unclaimed rule, for both stores: a status means the serial is claimed, so
    writing one removes the serial's unclaimed entry; an unclaimed entry means
    nobody declares the serial (any more), so writing one removes its old status.
    ``member_of``: the serial is the active member of that declared stack, whose
    record it uses from now on; it is neither unclaimed nor a device of its own.

    Stack members, for both stores: a serial resolves to the declaration it
    belongs to (itself when declared; the stack when it is a declared member of
    one or was recorded as its active member), and ``load``/``update`` work on that
    record, whose ``caller`` is the serial that called.
    """

    serial: str
    status: Status | None = None
    unclaimed: Unclaimed | None = None
    member_of: str = ""
    #: Forget the serial's unclaimed entry (the store makes room, or the entry expired).
    forget: bool = False
    #: The serial is the switch at this declared location (its normal form, ``str(Location)``): bound to it.
    located_at: str = ""

    def __post_init__(self) -> None:
        kinds = (self.status is not None, self.unclaimed is not None, bool(self.member_of), self.forget,
                 bool(self.located_at))
        if sum(kinds) != 1:
            raise ValueError(f"{self.serial}: a change records one of a status, an unclaimed entry, a stack membership, "
                             "a location's binding or forgets an unclaimed entry")

    @classmethod
    def of(cls, serial: str, decision: Decided) -> Change | None:
        member_of = getattr(decision, "member_of", "")
        located_at = getattr(decision, "located_at", None)
        if decision.status is None and decision.unclaimed is None and not member_of and located_at is None:
            return None
        return cls(serial, decision.status, decision.unclaimed, member_of,
                   located_at=str(located_at) if located_at is not None else "")

    @property
    def removes_unclaimed(self) -> bool:
        return self.status is not None or bool(self.member_of) or self.forget or bool(self.located_at)

    @property
    def removes_status(self) -> bool:
        return self.unclaimed is not None or bool(self.member_of)

    def applied_to(self, record: DeviceRecord) -> DeviceRecord:
        """The record as it reads once the change is made (a membership shows at the next load)."""
        return dataclasses.replace(
            record,
            status=self.status if self.status is not None else (None if self.removes_status else record.status),
            unclaimed=self.unclaimed if self.unclaimed is not None else (None if self.removes_unclaimed else record.unclaimed),
        )


def stacks_of(declarations: Mapping[str, Declaration]) -> dict[str, str]:
    """Declared stacks and their declared members -> the stack's serial (for resolving a caller)."""
    found: dict[str, str] = {}
    for serial, declaration in declarations.items():
        if declaration.stack:
            found[serial] = serial
            for member in declaration.stack_members:
                found.setdefault(member, serial)
    return found


def resolve(serial: str, declarations: Mapping[str, Declaration], stacks: Mapping[str, str],
            aliases: Mapping[str, str]) -> str:
    """The declaration ``serial`` belongs to: itself, the stack it is a declared or recorded member of, or itself."""
    if serial in declarations:
        return serial
    target = stacks.get(serial) or aliases.get(serial, "")
    return target if target in declarations else serial


class Store(Protocol):
    """What the listener and the command line need of a store.  Both stores keep every promise below.

    ``load(serial)``
        The record of ``serial`` (an empty one for a serial nobody knows).  Never waits for a controller:
        the Clixon store reads its copy of running, the embedded store its file and database.
    ``peek(serial)``
        The same record from what is in memory and a local read, without waiting for anything (no look at
        the declarations file, no network, no lock another caller may hold); None when it cannot say without
        waiting.  The listener answers polls that change nothing from it on the server's event loop.
    ``update(serial, decide)``
        Runs ``decide(record)`` and returns its decision.  A decision that changes something
        (:class:`Change`) is durable before ``update`` returns: committed to the database, or fsynced to the
        journal.  Two updates of one serial never interleave: the second decides on what the first
        recorded.  ``decide`` may run more than once and must be pure: the embedded store decides once
        without a transaction and, when that decision changes something, again inside one; a decision with
        ``recheck`` makes a store whose copy may be behind the source of truth (the Clixon store) fetch that
        serial and decide once more.  Raises :class:`StoreUnavailable` when nothing could be made durable.
    ``snapshot()``
        Everything, read-only, for the status table.
    ``reset(serial)``
        Forget a declared device's status so it starts over at its next poll; says what was done.  Raises
        :class:`UnknownSerial` for a serial that is not declared.
    ``problems()``
        What an operator must know about the store now (invalid declarations, controller unreachable).
    ``counters()``
        Totals since start, for ``/metrics``: ``unclaimed_dropped`` (forgotten to stay within
        :class:`UnclaimedPolicy`'s ``max_entries``) and ``unclaimed_expired`` (unseen for ``keep_days``).
    ``write_status(serial, change)``
        ``update`` for writers other than the provisioner: writes the status ``change(record)`` returns
        (None: nothing) and returns it (:class:`StoreBase`).
    ``update_many(updates)``
        ``update`` for many serials at once (a writer behind the answers: strangers' sightings): each pair's
        decision, or the exception its update raised, in order; the embedded store makes them durable in one
        commit (:class:`StoreBase` runs them one by one).
    ``refresh()``
        Look at the source of truth now rather than at the next interval (the declarations file; the
        controller's running datastore).
    ``pending_writes()``
        Writes made durable here but not yet at the source of truth (the Clixon store's journal; 0 for the
        embedded store, whose database is the source).
    ``controller_error()``
        None for a store without a controller; else the last error talking to it, "" while it answers.
    ``close()``
        Make pending writes durable where possible and release connections and threads.
    """

    def load(self, serial: str) -> DeviceRecord: ...

    def peek(self, serial: str) -> DeviceRecord | None: ...

    def update(self, serial: str, decide: Callable[[DeviceRecord], D]) -> D: ...

    def update_many(self, updates: list[tuple[str, Callable[[DeviceRecord], D]]]) -> list[D | Exception]: ...

    def snapshot(self) -> Snapshot: ...

    def reset(self, serial: str) -> str: ...

    def problems(self) -> tuple[str, ...]: ...

    def counters(self) -> Mapping[str, int]: ...

    def write_status(self, serial: str, change: Callable[[DeviceRecord], Status | None]) -> Status | None: ...

    def refresh(self) -> None: ...

    def pending_writes(self) -> int: ...

    def controller_error(self) -> str | None: ...

    def close(self) -> None: ...


# --------------------------------------------------------------------------- group commit

J = TypeVar("J")


class _Ticket(Generic[J]):
    __slots__ = ("job", "error", "done")

    def __init__(self, job: J):
        self.job = job
        self.error: BaseException | None = None
        self.done = threading.Event()


class GroupCommit(Generic[J]):
    """Concurrent callers hand in jobs; whoever gets there first runs every waiting job as one batch.

    One durable write (a database commit, an fsync) then serves many callers, and
    each caller returns only once its own job is durable.  ``run_batch`` gets the
    jobs and returns, per job, None or the exception that job failed with; an
    exception from ``run_batch`` itself fails every job of the batch.
    """

    def __init__(self, run_batch: Callable[[list[J]], list[BaseException | None]]):
        self._run_batch = run_batch
        self._queue: list[_Ticket[J]] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()

    def submit(self, job: J) -> None:
        error = self.submit_many([job])[0]
        if error is not None:
            raise error

    def submit_many(self, jobs: list[J]) -> list[BaseException | None]:
        """Hand in several jobs at once (they share a batch); per job, None or the exception it failed with."""
        tickets = [_Ticket(job) for job in jobs]
        with self._queue_lock:
            self._queue.extend(tickets)
        for ticket in tickets:
            while not ticket.done.is_set():
                with self._run_lock:
                    if not ticket.done.is_set():
                        self._drain()
        return [ticket.error for ticket in tickets]

    def _drain(self) -> None:
        with self._queue_lock:
            tickets, self._queue = self._queue, []
        if not tickets:
            return
        try:
            errors = self._run_batch([t.job for t in tickets])
            for ticket, error in zip(tickets, errors, strict=True):
                ticket.error = error
        except BaseException as exc:
            for ticket in tickets:
                ticket.error = exc
        finally:
            for ticket in tickets:
                ticket.done.set()
