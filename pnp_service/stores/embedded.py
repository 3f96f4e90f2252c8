"""The embedded store: the operator's declarations file, read and never written, and an SQLite state database.

Owns the no-controller mode.  The declarations file is XML in the YANG's shape
(``<config><services xmlns="http://clicon.org/controller"><pnp-device>...``),
checked against the YANG (``validation.py``) and planned here (the service
module's job under a controller).  It is re-read when it, or a template file a
declaration uses, changes: an edit reaches every listener within
``check_seconds``; an invalid edit keeps the last valid declarations in service
and says why.  Plans are a pure function of the declaration and its template
text, so every process computes the same revisions; each process keeps one plan
per declared serial.

What the software writes (status, unclaimed devices, the work it planned) lives
in SQLite (``--state``, default ``FILE.state.db`` beside the file, mode 0600):
WAL, synchronous commits, one short ``BEGIN IMMEDIATE`` transaction per batch of
decisions, so gunicorn workers and several listeners on one machine can share
it, and a crash at any moment loses nothing acknowledged.  Concurrent decisions
of one process are committed together (group commit): one fsync serves many
polls.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Collection, Iterator, Mapping, Sequence

from .. import model, validation
from ..model import Declaration, DeviceRecord, LocationDeclaration, Status, Unclaimed, Work
from ..neighbours import Location
from ..planner import PlanningError, find_template_file, plan, read_template_file
from .base import (STACK_MEMBERS_MAX, Change, D, ForgottenLog, GroupCommit, Snapshot, StoreBase, StoreError,
                   StoreUnavailable, UnclaimedPolicy, UnknownSerial, resolve, stacks_of)

log = logging.getLogger(__name__)

DEFAULT_CHECK_SECONDS = 1.0
#: How often statuses nobody declares are looked at, to forget those of devices gone for the unclaimed policy's days.
REMOVED_CHECK_SECONDS = 600.0
#: How long a write waits for another process's transaction before the device is told to retry.
BUSY_TIMEOUT_SECONDS = 5.0
SCHEMA_VERSION = 2


def default_state_path(declarations_path: str) -> str:
    """``pnp-datastore.xml`` -> ``pnp-datastore.state.db``, beside it."""
    return os.path.splitext(os.path.abspath(declarations_path))[0] + ".state.db"


def default_template_dirs(declarations_path: str) -> tuple[str, ...]:
    return (os.path.join(os.path.dirname(os.path.abspath(declarations_path)), "templates"),)


# --------------------------------------------------------------------------- declarations

Stamp = tuple[str, int, int, int]


def _stamp(path: str) -> Stamp:
    try:
        stat = os.stat(path)
    except OSError:
        return (path, 0, 0, -1)
    return (path, stat.st_ino, stat.st_mtime_ns, stat.st_size)


@dataclasses.dataclass(frozen=True)
class DeclarationSet:
    """One valid version of the declarations, planned: what the listener serves."""

    declarations: Mapping[str, Declaration]
    plans: Mapping[str, Work]
    errors: Mapping[str, str]  # serial -> why it could not be planned
    watched: tuple[str, ...]  # the file, the template folders and the template files used
    stamps: tuple[Stamp, ...]
    keys: Mapping[str, tuple] = dataclasses.field(default_factory=dict)  # what each plan was made of
    stacks: Mapping[str, str] = dataclasses.field(default_factory=dict)  # declared stacks and members -> stack
    #: Switches declared by where they are plugged in, by the normal form of the location.
    locations: Mapping[Location, LocationDeclaration] = dataclasses.field(default_factory=dict)
    #: The location (normal form, ``str(Location)``) -> its declaration, as bindings name them.
    located: Mapping[str, LocationDeclaration] = dataclasses.field(default_factory=dict)


class Declarations:
    """The declarations file, validated and planned, re-read when it or a template it uses changes."""

    def __init__(
        self,
        path: str,
        template_dirs: Sequence[str],
        known_step_types: Sequence[str] | None = None,
        check_seconds: float = DEFAULT_CHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        announce: bool = True,
        context: Mapping[str, object] | None = None,
        tolerate_invalid: bool = False,
    ):
        self.path = os.path.abspath(path)
        self.shown = path  # as the operator wrote it: what messages name
        self.context = dict(context or {})  # template variables every declaration gets (the controller's SSH key)
        self.announce = announce  # a listener says what it loaded; a command that only looks does not
        self.template_dirs = tuple(template_dirs)
        self.known_step_types = known_step_types
        self.check_seconds = check_seconds
        self.clock = clock
        self.problem = ""
        #: False when the file could not be read at start (tolerated: nothing is declared, ``problem`` says why).
        self.readable = True
        self._lock = threading.Lock()
        try:
            self._current = self._load(None)  # an invalid or missing file fails here, with what to fix...
        except validation.DeclarationsError as exc:
            if not tolerate_invalid or not os.path.exists(self.path):  # a missing file is the wrong path
                raise
            # ...unless the caller only looks (status) or clears statuses (reset): it works without them.
            self.problem = str(exc)
            self.readable = False
            self._current = DeclarationSet({}, {}, {}, (self.path,), (_stamp(self.path),))
        self._checked = clock()

    def current(self) -> DeclarationSet:
        """The set in service; every ``check_seconds`` one caller looks whether the files changed and re-reads."""
        current = self._current
        if self.clock() - self._checked < self.check_seconds or not self._lock.acquire(blocking=False):
            return current  # checked recently, or another thread is looking right now
        try:
            self._checked = self.clock()
            stamps = tuple(_stamp(path) for path in current.watched)
            if stamps == current.stamps:
                return current
            try:
                fresh = self._load(current)
            except validation.DeclarationsError as exc:
                if str(exc) != self.problem:
                    log.error("%s; the last valid declarations stay in service", exc)
                self.problem = str(exc)
                # Remember what was looked at, so the broken file is not re-checked until it changes again.
                self._current = dataclasses.replace(current, stamps=stamps)
                return self._current
            if self.problem:
                log.info("declarations %s are valid again", self.path)
            self.problem = ""
            self.readable = True
            self._current = fresh
            return fresh
        finally:
            self._lock.release()

    def changed(self) -> bool:
        """Whether the files differ from the set in service (a few stats: cheap, never a read)."""
        current = self._current
        return tuple(_stamp(path) for path in current.watched) != current.stamps

    def in_service_or_last(self) -> DeclarationSet:
        """The set in service, without looking at the files."""
        return self._current

    def in_service(self) -> DeclarationSet | None:
        """The set in service when no look at the files is due (never waits); None when one is."""
        return self._current if self.clock() - self._checked < self.check_seconds else None

    def reload(self) -> DeclarationSet:
        """Look at the files now, whatever ``check_seconds`` says."""
        self._checked = float("-inf")
        return self.current()

    def plan_for(self, declaration: Declaration) -> tuple[Work | None, str]:
        """The work of one declaration outside the file's (a switch bound to a location), or why there is none."""
        try:
            return plan(declaration, lambda name: read_template_file(find_template_file(name, self.template_dirs)),
                        self.known_step_types, self.context), ""
        except (PlanningError, LookupError, OSError, UnicodeDecodeError) as exc:
            return None, f"pnp-device {declaration.serial}: {exc}"

    def _load(self, previous: DeclarationSet | None) -> DeclarationSet:
        before = tuple(_stamp(p) for p in (self.path, *self.template_dirs))
        declared = validation.read_file(self.path, self.shown)
        declarations = declared.declarations
        texts: dict[str, str] = {}
        used: dict[str, str] = {}

        def load_template(name: str) -> str:
            if name not in texts:
                path = find_template_file(name, self.template_dirs)
                used[name] = path
                texts[name] = read_template_file(path)
            return texts[name]

        plans: dict[str, Work] = {}
        errors: dict[str, str] = {}
        keys: dict[str, tuple] = {}
        for serial, declaration in declarations.items():
            try:
                text = load_template(declaration.template_file) if declaration.template_file else None
            except (LookupError, OSError, UnicodeDecodeError) as exc:
                errors[serial] = f"pnp-device {serial}: {exc}"
                continue
            key = (declaration, text)
            keys[serial] = key
            if previous is not None and previous.keys.get(serial) == key and serial in previous.plans:
                plans[serial] = previous.plans[serial]  # nothing it is made of changed
                continue
            try:
                plans[serial] = plan(declaration, load_template, self.known_step_types, self.context)
            except PlanningError as exc:
                errors[serial] = str(exc)
        for at, location in declared.locations.items():  # planned when a switch is bound; its template watched now
            try:
                if location.declaration.template_file:
                    load_template(location.declaration.template_file)
            except (LookupError, OSError, UnicodeDecodeError) as exc:
                errors[f"location {at}"] = f"pnp-location {location.neighbor} {location.port}: {exc}"
        if self.announce:
            for message in errors.values():
                if previous is None or message not in previous.errors.values():
                    log.error("%s", message)
            log.info("declarations %s: %d devices, %d planned, %d locations, %d with errors", self.path,
                     len(declarations), len(plans), len(declared.locations), len(errors))
        watched = (self.path, *self.template_dirs, *sorted(set(used.values())))
        stamps = before + tuple(_stamp(p) for p in watched[len(before):])
        return DeclarationSet(declarations, plans, errors, watched, stamps, keys, stacks_of(declarations),
                              declared.locations, {str(at): location for at, location in declared.locations.items()})


# --------------------------------------------------------------------------- state database

_SCHEMA = """
CREATE TABLE IF NOT EXISTS status (serial TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS unclaimed (serial TEXT PRIMARY KEY, data TEXT NOT NULL, last_seen TEXT NOT NULL DEFAULT '')
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS work (serial TEXT PRIMARY KEY, revision TEXT NOT NULL, data TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS stack_member (serial TEXT PRIMARY KEY, stack TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS location_binding (serial TEXT PRIMARY KEY, location TEXT NOT NULL UNIQUE) WITHOUT ROWID;
"""
#: Version 1 kept no column to find the longest unseen unclaimed devices by.
_MIGRATIONS = {
    1: """
ALTER TABLE unclaimed ADD COLUMN last_seen TEXT NOT NULL DEFAULT '';
UPDATE unclaimed SET last_seen = coalesce(json_extract(data, '$.last_seen'), '');
""",
}
_INDEXES = "CREATE INDEX IF NOT EXISTS unclaimed_by_age ON unclaimed (last_seen)"


def _dumps(record: Status | Unclaimed) -> str:
    return json.dumps(model.record_to_dict(record), separators=(",", ":"), ensure_ascii=False)


# Decoded rows by their text: most polls read a row that has not changed since the last one, and records
# are immutable, so the same object serves again.  Bounded by the number of distinct rows recently read.
_decoded: dict[str, Status | Unclaimed] = {}
_DECODED_MAX = 16_384


def _decode(data: str | None, cls: type[model.R]) -> model.R | None:
    if not data:
        return None
    found = _decoded.get(data)
    if found is None or type(found) is not cls:
        if len(_decoded) >= _DECODED_MAX:
            _decoded.clear()
        found = _decoded[data] = model.record_from_dict(cls, json.loads(data))
    return found


def _status(data: str | None) -> Status | None:
    return _decode(data, Status)


def _unclaimed(data: str | None) -> Unclaimed | None:
    return _decode(data, Unclaimed)


class StateDb:
    """The SQLite database of status, unclaimed devices and planned work; one connection per thread."""

    def __init__(self, path: str, read_only: bool = False):
        self.path = os.path.abspath(path)
        self.read_only = read_only
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if read_only:
            self.exists = os.path.exists(self.path)
            return
        folder = os.path.dirname(self.path)
        if not os.path.isdir(folder):
            raise StoreError(f"state database {self.path}: folder {folder} does not exist")
        if not os.path.exists(self.path):
            # Created private before SQLite opens it: it holds what devices reported.  SQLite gives
            # its -wal and -shm files the same mode.
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self.exists = True
        connection = self.connection()
        with self._transaction(connection):
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(f"state database {self.path} was written by a newer pnp-service (schema {version}); "
                                 "upgrade this one, or give another --state")
            fresh = not connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'status'").fetchone()
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                connection.execute(statement)
            for since in range(version if not fresh else SCHEMA_VERSION, SCHEMA_VERSION):
                for statement in filter(None, (s.strip() for s in _MIGRATIONS[since].split(";"))):
                    connection.execute(statement)
            connection.execute(_INDEXES)
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            try:
                if self.read_only:
                    connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_SECONDS,
                                                 isolation_level=None, check_same_thread=False)
                else:
                    connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                                 check_same_thread=False)
                    connection.execute("PRAGMA journal_mode = WAL")
                    connection.execute("PRAGMA synchronous = FULL")  # a commit is on disk before the device hears
                # Rows are small and a poll reads one: a small page cache per thread's connection is plenty.
                connection.execute("PRAGMA cache_size = -512")
            except sqlite3.Error as exc:
                raise StoreError(f"state database {self.path}: {exc}") from None
            self._local.connection = connection
            with self._connections_lock:
                self._connections.append(connection)
        return connection

    @contextlib.contextmanager
    def _transaction(self, connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
        try:
            connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"state database {self.path} is busy: {exc}") from None
        try:
            yield connection
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
            raise StoreUnavailable(f"state database {self.path}: commit failed: {exc}") from None

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        if self.read_only:
            raise StoreError(f"state database {self.path} was opened read-only")
        return self._transaction(self.connection())

    def read(self, serial: str, connection: sqlite3.Connection | None = None
             ) -> tuple[Status | None, Unclaimed | None, str]:
        """The status and unclaimed entry of ``serial``, and the stack it was recorded a member of ("")."""
        if self.read_only and not self.exists:
            return None, None, ""
        row = (connection or self.connection()).execute(
            "SELECT (SELECT data FROM status WHERE serial = ?1), (SELECT data FROM unclaimed WHERE serial = ?1), "
            "(SELECT stack FROM stack_member WHERE serial = ?1)",
            (serial,),
        ).fetchone()
        return _status(row[0]), _unclaimed(row[1]), row[2] or ""

    @staticmethod
    def rows_of(change: Change) -> tuple[str | None, str | None, str | None]:
        """The encoded status, unclaimed entry and its last-seen time ``change`` writes: made before any statement
        runs, so a value that cannot be encoded fails its job without half of it written."""
        unclaimed = change.unclaimed
        return (_dumps(change.status) if change.status is not None else None,
                _dumps(unclaimed) if unclaimed is not None else None,
                model.format_time(unclaimed.last_seen) if unclaimed is not None else None)

    @staticmethod
    def apply(connection: sqlite3.Connection, change: Change, rows: tuple[str | None, str | None, str | None], *,
              has_unclaimed: bool = True, has_status: bool = True) -> None:
        """Record ``change`` following the unclaimed rule of :class:`~pnp_service.stores.base.Change` (``rows``:
        its :meth:`rows_of`); ``has_unclaimed``/``has_status`` False: the transaction has just read that there is no
        such row."""
        status, unclaimed, last_seen = rows
        if change.member_of and connection.execute(
                "SELECT count(*) FROM stack_member WHERE stack = ? AND serial != ?",
                (change.member_of, change.serial)).fetchone()[0] >= STACK_MEMBERS_MAX:
            log.error("stack %s has %d recorded members already: %s is not recorded as another (it stays unclaimed)",
                      change.member_of, STACK_MEMBERS_MAX, change.serial)
            return
        if status is not None:
            connection.execute("INSERT OR REPLACE INTO status VALUES (?, ?)", (change.serial, status))
        if unclaimed is not None:
            connection.execute("INSERT OR REPLACE INTO unclaimed (serial, data, last_seen) VALUES (?, ?, ?)",
                               (change.serial, unclaimed, last_seen))
        if change.member_of:
            connection.execute("INSERT OR REPLACE INTO stack_member VALUES (?, ?)", (change.serial, change.member_of))
        if change.located_at:
            # Sticky: a location another serial holds stays its (another process may have bound it a moment ago).
            connection.execute("DELETE FROM location_binding WHERE serial = ?", (change.serial,))
            if not connection.execute("INSERT OR IGNORE INTO location_binding VALUES (?, ?)",
                                      (change.serial, change.located_at)).rowcount:
                log.warning("%s: location %s was bound to another switch a moment ago; it stays unclaimed",
                            change.serial, change.located_at)
                return
        if change.removes_unclaimed and has_unclaimed:
            connection.execute("DELETE FROM unclaimed WHERE serial = ?", (change.serial,))
        if change.removes_status and has_status:
            connection.execute("DELETE FROM status WHERE serial = ?", (change.serial,))

    @staticmethod
    def limit_unclaimed(connection: sqlite3.Connection, policy: UnclaimedPolicy, newest: dt.datetime
                        ) -> tuple[int, int]:
        """Forget unclaimed devices unseen for the policy's days, then the longest unseen beyond its size;
        returns (expired, dropped)."""
        expired = connection.execute("DELETE FROM unclaimed WHERE last_seen < ?",
                                     (policy.expired_before(newest),)).rowcount
        count = connection.execute("SELECT count(*) FROM unclaimed").fetchone()[0]
        dropped = 0
        if count > policy.max_entries:
            dropped = connection.execute(
                "DELETE FROM unclaimed WHERE serial IN (SELECT serial FROM unclaimed ORDER BY last_seen LIMIT ?)",
                (count - policy.max_entries,)).rowcount
        return expired, dropped

    def delete_status(self, serial: str) -> bool:
        """Delete the serial's status and its binding to a location (which the next switch there may take)."""
        with self.transaction() as connection:
            connection.execute("DELETE FROM location_binding WHERE serial = ?", (serial,))
            return connection.execute("DELETE FROM status WHERE serial = ?", (serial,)).rowcount > 0

    def bindings(self, connection: sqlite3.Connection | None = None) -> dict[str, str]:
        """Location (normal form) -> the serial bound to it."""
        if self.read_only and not self.exists:
            return {}
        return dict((connection or self.connection()).execute("SELECT location, serial FROM location_binding"))

    def sync_work(self, plans: Mapping[str, Work]) -> int:
        """Make the work table hold exactly ``plans``; returns how many rows changed."""
        with self.transaction() as connection:
            stored = dict(connection.execute("SELECT serial, revision FROM work"))
            changed = [(s, w.revision, model.work_to_json(w)) for s, w in plans.items() if stored.get(s) != w.revision]
            gone = [(s,) for s in stored if s not in plans]
            connection.executemany("INSERT OR REPLACE INTO work VALUES (?, ?, ?)", changed)
            connection.executemany("DELETE FROM work WHERE serial = ?", gone)
        return len(changed) + len(gone)

    def forget_removed(self, declared: Collection[str], before: str) -> list[str]:
        """Delete the statuses nobody declares any more whose device has not been seen since ``before`` (a
        ``last-contact`` text): the ``removed`` rows of a switch that is gone.  The serials deleted."""
        with self.transaction() as connection:
            rows = connection.execute("SELECT serial, coalesce(json_extract(data, '$.last_contact'), '') FROM status")
            gone = [(serial,) for serial, seen in rows if serial not in declared and seen and seen < before]
            connection.executemany("DELETE FROM status WHERE serial = ?", gone)
        return [serial for (serial,) in gone]

    def everything(self) -> tuple[dict[str, Status], dict[str, Unclaimed]]:
        if self.read_only and not self.exists:
            return {}, {}
        connection = self.connection()
        statuses = {serial: _status(data) for serial, data in connection.execute("SELECT serial, data FROM status")}
        unclaimed = {serial: _unclaimed(data) for serial, data in connection.execute("SELECT serial, data FROM unclaimed")}
        return {k: v for k, v in statuses.items() if v}, {k: v for k, v in unclaimed.items() if v}

    def close(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    connection.close()
            self._connections.clear()
        self._local = threading.local()


# --------------------------------------------------------------------------- the store


@dataclasses.dataclass
class _Job:
    serial: str
    decide: Callable[[DeviceRecord], Any]
    declarations: DeclarationSet
    decision: Any = None


class EmbeddedStore(StoreBase):
    """Store of the embedded mode; see the module docstring."""

    #: update_many is one transaction: the server hands it the writes of many devices at once.
    updates_many_in_one_commit = True

    def __init__(
        self,
        path: str,
        state_path: str | None = None,
        *,
        read_only: bool = False,
        template_dirs: Sequence[str] | None = None,
        known_step_types: Sequence[str] | None = None,
        check_seconds: float = DEFAULT_CHECK_SECONDS,
        context: Mapping[str, object] | None = None,
        unclaimed_policy: UnclaimedPolicy | None = None,
        tolerate_invalid: bool = False,
    ):
        """``tolerate_invalid``: an invalid declarations file does not stop the store (for ``status`` and
        ``reset``, which an operator needs most when the file is broken): nothing is declared, ``problems`` says
        why, and no work is recorded."""
        self.path = os.path.abspath(path)
        self.read_only = read_only
        self.unclaimed_policy = unclaimed_policy or UnclaimedPolicy()
        self._counters = {"unclaimed_dropped": 0, "unclaimed_expired": 0}
        self._removed_checked = float("-inf")  # when removed rows were last looked at (monotonic)
        self._forgotten = ForgottenLog(self.unclaimed_policy)
        try:
            self.declarations = Declarations(
                self.path, template_dirs or default_template_dirs(self.path), known_step_types, check_seconds,
                announce=not read_only, context=context, tolerate_invalid=tolerate_invalid,
            )
        except validation.DeclarationsError as exc:
            raise StoreError(str(exc)) from None
        self.db = StateDb(state_path or default_state_path(self.path), read_only)
        self._commits: GroupCommit[_Job] = GroupCommit(self._run_batch)
        self._synced: DeclarationSet | None = None
        self._sync_lock = threading.Lock()
        self._bound_lock = threading.Lock()  # the bound switches' plans only: never held across a statement
        self._bound_plans_for: DeclarationSet | None = None
        self._bound_plans: dict[str, tuple[Declaration, Work | None, str]] = {}
        self._current()

    # ------------------------------------------------------------------ the Store contract

    def load(self, serial: str) -> DeviceRecord:
        return self._resolved(self._current_for(serial), serial)

    def peek(self, serial: str) -> DeviceRecord | None:
        current = self.declarations.in_service()
        if current is None or current is not self._synced:
            return None  # a look at the files, or recording new work, is due: whoever can wait does it
        if not self._declared(current, serial) and self.declarations.changed():
            return None  # maybe declared a moment ago: looked at by whoever can wait
        return self._resolved(current, serial)

    @staticmethod
    def _declared(current: DeclarationSet, serial: str) -> bool:
        return serial in current.declarations or serial in current.stacks

    def _current_for(self, serial: str) -> DeclarationSet:
        """The set in service; for a serial it does not declare, looked at again now when the file changed: a
        device declared a moment ago is never told it is not (and backed off for minutes)."""
        current = self._current()
        if not self._declared(current, serial) and self.declarations.changed():
            self.declarations.reload()
            current = self._current()
        return current

    def update(self, serial: str, decide: Callable[[DeviceRecord], D]) -> D:
        current = self._current_for(serial)
        # Most polls change nothing: decide on what is there, outside any transaction.
        decision = decide(self._resolved(current, serial))
        if Change.of(serial, decision) is None:
            return decision
        # A change: decide again inside a transaction (another poll may have changed the record),
        # batched with this process's other changes into one commit.
        job = _Job(serial, decide, current)
        self._commits.submit(job)
        return job.decision

    def update_many(self, updates: list[tuple[str, Callable[[DeviceRecord], D]]]) -> list[D | Exception]:
        """Every update decided inside one commit (with this process's other changes).

        No look outside the transaction first, as :meth:`update` does: what is handed over in many is what the
        server found to change, and every statement costs the batch a hand-over of the interpreter's lock."""
        jobs: list[_Job | Exception] = []
        for serial, decide in updates:
            try:
                jobs.append(_Job(serial, decide, self._current_for(serial)))
            except Exception as exc:  # noqa: BLE001 - reported per update
                jobs.append(exc)
        errors = iter(self._commits.submit_many([job for job in jobs if isinstance(job, _Job)]))
        results: list[D | Exception] = []
        for job in jobs:
            error = next(errors) if isinstance(job, _Job) else job
            results.append(job.decision if isinstance(job, _Job) and error is None else error)  # type: ignore[arg-type]
        return results

    def snapshot(self) -> Snapshot:
        current = self._current()
        statuses, unclaimed = self.db.everything()
        bound = {serial: current.located[at] for at, serial in self.db.bindings().items() if at in current.located}
        serials = sorted(set(current.declarations) | set(statuses) | set(bound))
        records = tuple(self._record(current, s, statuses.get(s), None, s) if s not in bound else
                        self._bound_record(current, bound[s].for_serial(s), statuses.get(s)) for s in serials)
        entries = tuple(unclaimed[s] for s in sorted(unclaimed) if s not in current.declarations)
        return Snapshot(records, entries, self.problems(), declarations_known=self.declarations.readable)

    def reset(self, serial: str) -> str:
        current = self._current()
        status, unclaimed, _ = self.db.read(serial)
        located = next((at for at, holder in self.db.bindings().items() if holder == serial), None)
        if located is not None and serial not in current.declarations:
            self.db.delete_status(serial)
            return (f"{serial}: status cleared and location {located} freed; the next switch found there (this one "
                    "or another) is bound to it and provisioned")
        if serial not in current.declarations:
            if status is not None:
                self.db.delete_status(serial)
                if not self.declarations.readable:
                    return f"{serial}: status cleared (the declarations file cannot be read: fix it before it polls)"
                return f"{serial} is not declared any more; its old status is removed"
            if unclaimed is not None:
                raise UnknownSerial(f"{serial} is unclaimed, not declared: declare it in {self.path} first")
            raise UnknownSerial(f"{serial} is not declared in {self.path} and has no status")
        if status is None:
            return f"{serial} has no status yet; nothing to reset"
        self.db.delete_status(serial)
        return f"{serial}: status cleared; the device starts over at its next poll"

    def problems(self) -> tuple[str, ...]:
        problem = self.declarations.problem
        kept = "the last valid declarations stay in service" if self.declarations.readable else \
            "nothing is declared until it is fixed"
        problems = [f"{problem} ({kept})"] if problem else []
        errors = self.declarations.in_service_or_last().errors
        if errors:
            named = "; ".join(f"{message}" for _, message in sorted(errors.items())[:3])
            problems.append(f"{len(errors)} declared devices cannot be planned and are served nothing: {named}"
                            + ("; ..." if len(errors) > 3 else ""))
        return tuple(problems)

    def counters(self) -> Mapping[str, int]:
        return dict(self._counters)

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ internals

    def pending_writes(self) -> int:
        return 0  # every write is committed to the database before update returns

    def controller_error(self) -> str | None:
        return None

    def refresh(self) -> None:
        """Look at the declarations file now (tests, and ``status`` after an edit)."""
        self.declarations.reload()
        self._current()

    def _current(self) -> DeclarationSet:
        current = self.declarations.current()
        if current is not self._synced and not self.read_only and self.declarations.readable:
            with self._sync_lock:
                if current is not self._synced:
                    changed = self.db.sync_work(current.plans)
                    if changed:
                        log.info("state %s: work of %d devices recorded", self.db.path, changed)
                    self._synced = current
                    self._removed_checked = float("-inf")  # declarations changed: look at once
        if not self.read_only and time.monotonic() - self._removed_checked >= REMOVED_CHECK_SECONDS \
                and self.declarations.readable:
            self._removed_checked = time.monotonic()
            cutoff = self.unclaimed_policy.expired_before(dt.datetime.now(dt.timezone.utc))
            gone = self.db.forget_removed(current.declarations.keys(), cutoff)
            if gone:
                log.info("forgot the status of %d devices nobody declares that were not seen for %d days: %s", len(gone),
                         self.unclaimed_policy.keep_days, ", ".join(gone[:10]) + (", ..." if len(gone) > 10 else ""))
        return current

    @staticmethod
    def _record(current: DeclarationSet, serial: str, status: Status | None, unclaimed: Unclaimed | None,
                caller: str) -> DeviceRecord:
        return DeviceRecord(
            serial,
            current.declarations.get(serial),
            current.plans.get(serial),
            status,
            unclaimed,
            current.errors.get(serial, ""),
            caller,
            current.stacks,
        )

    def _resolved(self, current: DeclarationSet, serial: str, connection: sqlite3.Connection | None = None) -> DeviceRecord:
        """The record ``serial`` belongs to: its own, that of the declared stack it is a member of, or that of the
        location it is bound to."""
        status, unclaimed, member_of = self.db.read(serial, connection)
        target = resolve(serial, current.declarations, current.stacks, {serial: member_of} if member_of else {})
        if target != serial:
            status, _, _ = self.db.read(target, connection)
            unclaimed = None
        record = self._record(current, target, status, unclaimed, serial)
        if record.declaration is not None or not current.locations:
            return record
        bound = self.db.bindings(connection)
        located = next((current.located.get(at) for at, holder in bound.items() if holder == serial), None)
        if located is not None:
            declaration = located.for_serial(serial)
            work, error = self._bound_plan(current, declaration)
            return dataclasses.replace(record, declaration=declaration, work=work, planning_error=error)
        return dataclasses.replace(record, locations={at: bound.get(str(at), "") for at in current.locations},
                                   location_declarations=current.locations)

    def _bound_record(self, current: DeclarationSet, declaration: Declaration, status: Status | None) -> DeviceRecord:
        work, error = self._bound_plan(current, declaration)
        return DeviceRecord(declaration.serial, declaration, work, status, None, error, declaration.serial)

    def _bound_plan(self, current: DeclarationSet, declaration: Declaration) -> tuple[Work | None, str]:
        """The work of a switch bound to a location, planned once per version of the declarations."""
        with self._bound_lock:
            if self._bound_plans_for is not current:
                self._bound_plans_for, self._bound_plans = current, {}
            planned = self._bound_plans.get(declaration.serial)
        if planned is None or planned[0] != declaration:
            work, error = self.declarations.plan_for(declaration)
            planned = (declaration, work, error)
            with self._bound_lock:
                if len(self._bound_plans) < max(64, 2 * len(current.locations)):  # bound: one per location
                    self._bound_plans[declaration.serial] = planned
        return planned[1], planned[2]

    def _run_batch(self, jobs: list[_Job]) -> list[BaseException | None]:
        """Decide and record every job in one transaction.  A job whose deciding fails has written nothing and fails
        alone; a statement that fails (a full disk) fails the whole batch, rolled back."""
        errors: list[BaseException | None] = [None] * len(jobs)
        newcomer: dt.datetime | None = None  # the latest sighting of a stranger not recorded before
        with self.db.transaction() as connection:
            for index, job in enumerate(jobs):
                try:
                    record = self._resolved(job.declarations, job.serial, connection)
                    job.decision = job.decide(record)
                    change = Change.of(record.serial, job.decision)
                    rows = self.db.rows_of(change) if change is not None else None
                except Exception as exc:  # noqa: BLE001 - this job's own failure: nothing of it was written
                    errors[index] = exc
                    continue
                if change is None or rows is None:
                    continue
                # What the read just found absent needs no delete (a stack member's rows are another's).
                own = record.serial == job.serial
                self.db.apply(connection, change, rows, has_unclaimed=not own or record.unclaimed is not None,
                              has_status=not own or record.status is not None)
                seen = change.unclaimed.last_seen if change.unclaimed is not None else None
                if record.unclaimed is None and seen is not None:
                    newcomer = max(newcomer, seen) if newcomer else seen
            if newcomer is not None:  # only a newcomer can grow the table
                expired, dropped = self.db.limit_unclaimed(connection, self.unclaimed_policy, newcomer)
        if newcomer is not None and (expired or dropped):
            self._counters["unclaimed_expired"] += expired
            self._counters["unclaimed_dropped"] += dropped
            self._forgotten.add(dropped)
        return errors


def write_example(path: str) -> None:
    """``pnp-service init``: a commented example declarations file, created private (it will hold secrets)."""
    from importlib import resources

    text = resources.files("pnp_service").joinpath("examples", "declarations.xml").read_text(encoding="utf-8")
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
