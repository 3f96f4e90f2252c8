"""The Clixon store: declarations, work and status in a Clixon controller.

Owns the listener's copy of the controller's ``running`` (``/pnp`` and the
``pnp-device`` declarations, as compact records) and the write path to it.

Reads never wait: a poll reads the copy and the journal's pending changes
without a lock.  The copy is fetched outside every lock and swapped in whole:
when the controller announces a transaction (a subscription to its
``controller-transaction`` stream: an operator's commit), every
``refresh_seconds`` as a safety net (other listeners' plain commits announce
nothing), and for one serial when a decision asks to look again (a device
answered a request this listener did not send: several listeners behind a
balancer).

Writes (status, unclaimed devices) are appended to the journal and fsynced
before the agent gets its answer (concurrent polls share one fsync), then
committed by a background flusher with lock(candidate) -> edit-config ->
commit -> unlock.

Write-through (several listeners, or several workers, that a balancer may hand
any message of one device): the device's record is read from the controller
before each decision that may change it, and a status written is committed
(with every other device's waiting writes: one transaction) before the device
hears the answer.  So whichever listener takes the next message judges it on
what the last one recorded: an answer to a request another listener sent, a
poll after an answer another listener took.  Without it a listener's own
writes reach running within a second and the others' at the next refresh.

Three kinds of failure are told apart:

* the controller is down, or busy (a transaction holds the candidate, another
  session has uncommitted edits our commit would publish): the batch waits in
  the journal and is retried with a growing delay; a restart replays it;
* the controller refuses the data (a value outside a pattern, an unknown
  node): the batch is split until the refused change is found, that change is
  quarantined (an ERROR line naming the serial and the controller's message,
  and ``JOURNAL.rejected``), and every other change is committed.  A journal
  poisoned by an older version heals this way at start.

So one bad record never blocks the others, and nothing acknowledged to a
device is lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import heapq
import logging
import random
import threading
import time
import zlib
from typing import Callable, Iterable, Iterator, Mapping, NamedTuple

from lxml import etree

from ... import model
from ...backoff import Backoff
from ...logs import event
from ...model import (CONTROLLER_NS, NETCONF_NS, PNP_NS, Declaration, DeviceRecord, LocationDeclaration, Status,
                      Unclaimed, Work, q)
from ...neighbours import Location
from ...xmlsafe import escape_text, iterparse, iterparse_pieces
from ..base import (STACK_MEMBERS_MAX, Change, D, ForgottenLog, GroupCommit, Snapshot, StoreBase, StoreError,
                    StoreUnavailable, UnclaimedPolicy, UnknownSerial, resolve, stacks_of)
from .operator_requests import CLEARS, Claim, claims_in, clear_lists, clears_in, make_claims
from .journal import Journal
from .netconf import (DECLARATION_PATH, DEFAULT_SOCKET, DEVICE_PATH, ControllerUnavailable, RpcError, Session, by_serials,
                      candidate_locked, commit_edit, controller_commit_edit)

log = logging.getLogger(__name__)

#: What the copy holds: not /pnp/summary (a view written from the copy) nor the operator's requests (read every
#: second on their own).
_ALL = ("/pnp:pnp/pnp:device | /pnp:pnp/pnp:unclaimed | /pnp:pnp/pnp:stack-member | /ctrl:services/pnp:pnp-device"
        " | /ctrl:services/pnp:pnp-location")
#: A device waiting for an operator (error) or done (provisioned) is looked up in the controller before it is
#: answered, at most this often per device: a reset or an edit, by whatever path it came (a plain NETCONF commit
#: announces nothing), is seen at the device's next poll.  Such devices poll every 10 or 60 minutes.
RELOOK_SECONDS = 30.0
#: A serial's entries in running: its status and work, and its declaration.
_ENTRIES = (DEVICE_PATH, DECLARATION_PATH)
_RELOOKED_STATES = ("error", "provisioned")
#: At most this many devices of one batch are looked up in one get-config (the rest one by one).
RELOOK_BATCH_MAX = 64
#: The operator's requests made in the controller's CLI (``pnp reset``, ``pnp claim``), read every REQUESTS_SECONDS:
#: they take effect at the device's next poll.
_REQUESTS = " | ".join(f"/pnp:pnp/pnp:{name}" for name in ("reset", "claim", *CLEARS))
REQUESTS_SECONDS = 1.0
#: A lookup on a device's way (a poll or an answer that asks to look again) waits this long for the controller,
#: which answers one request at a time: a commit of 10,000 declarations keeps it busy for seconds, and the one
#: thread that decides durable work must not wait behind it.  Past it the device is decided on the copy (as when the
#: controller is down), and such lookups pause for LOOKUP_PAUSE_SECONDS so the next devices do not wait the same.
#: With write-through the wait is ``write_through_seconds``: there the lookup is what keeps listeners consistent.
LOOKUP_WAIT_SECONDS = 0.5
#: A settled device's relook waits less: it only catches what a plain commit changed unannounced, and the copy is
#: refreshed every ``refresh_seconds`` anyway.  It holds the batch every durable answer waits in.
RELOOK_WAIT_SECONDS = 0.1
LOOKUP_PAUSE_SECONDS = 2.0
#: Write-through: how long an answer waits for its status to be committed.  Beyond it (the controller down or held
#: by an operator's uncommitted edits) the answer goes out with the write in the journal, and a warning says so.
WRITE_THROUGH_SECONDS = 15.0
#: The flusher rests this many times its last commit's duration before the next: a commit validates the whole
#: datastore (seconds at 10,000 declared), and a roll-out writes statuses without pause.  At 1.0 the controller
#: spends at most half its time on them; what arrives meanwhile is durable in the journal and goes in one commit.
#: (Not with write-through, where answers wait for the commit.)
FLUSH_PACE = 1.0
#: Another session's commit holds the candidate for milliseconds: tries, a short random pause apart, before a
#: flush counts as failed and waits its backoff.
_BUSY_TRIES = 8


class Acted(NamedTuple):
    """What one reading of the operator's requests did: the serials reset and claimed, the entries cleared, the
    reset switches whose location was freed."""

    resets: list[str]
    claimed: list[str]
    cleared: dict[str, int]
    freed: list[str] = []


# --------------------------------------------------------------------------- the copy of running


@dataclasses.dataclass
class View:
    """Compact records of what running holds (no XML trees are kept)."""

    declarations: dict[str, Declaration] = dataclasses.field(default_factory=dict)
    work: dict[str, Work] = dataclasses.field(default_factory=dict)
    status: dict[str, Status] = dataclasses.field(default_factory=dict)
    unclaimed: dict[str, Unclaimed] = dataclasses.field(default_factory=dict)
    #: Recorded stack members (``/pnp/stack-member``) and declared stacks with their members -> the stack.
    aliases: dict[str, str] = dataclasses.field(default_factory=dict)
    stacks: dict[str, str] = dataclasses.field(default_factory=dict)
    #: ``/pnp/device`` entries with neither work nor status (a declaration deleted before its device called in).
    empty: set[str] = dataclasses.field(default_factory=set)
    #: Switches declared by location, and each declared location -> the serial whose declaration was made from it.
    locations: dict[Location, LocationDeclaration] = dataclasses.field(default_factory=dict)
    bound: dict[Location, str] = dataclasses.field(default_factory=dict)

    def find_bindings(self) -> None:
        """Which declared location each declaration made from one holds (``located``)."""
        held = {Location(*d.located): serial for serial, d in self.declarations.items() if d.located}
        self.bound = {at: held.get(at, "") for at in self.locations}

    def apply(self, change: Change) -> None:
        """Record a committed change, following the unclaimed rule."""
        if change.status is not None:
            self.status[change.serial] = change.status
        if change.unclaimed is not None:
            self.unclaimed[change.serial] = change.unclaimed
        if change.member_of:
            self.aliases[change.serial] = change.member_of
        if change.removes_unclaimed:
            self.unclaimed.pop(change.serial, None)
        if change.removes_status:
            self.status.pop(change.serial, None)


_VIEW_TAGS = (q("device"), q("unclaimed"), q("pnp-device"), q("stack-member"), q("pnp-location"))


def view_from_reply(data: bytes | bytearray, previous: View | None = None) -> View:
    """Build the view from a get-config reply, element by element, freeing each as it goes."""
    return view_from_events(iterparse(data, tag=_VIEW_TAGS), previous)


@model.sharing_texts()  # equal texts across 10,000 records kept once
def view_from_events(events: Iterable[tuple], previous: View | None = None) -> View:
    """Build the view from a reply's parse events (``end`` of each element of :data:`_VIEW_TAGS`).

    Records that did not change are taken from ``previous`` (the same objects), and equal texts are one string
    (:func:`model.sharing_texts`), so a refresh holds little more than one copy of running in memory.
    """
    view = View()
    old = previous or View()
    for _, element in events:
        parent = element.getparent()
        if element.tag == q("pnp-device"):
            declaration = model.declaration_from_xml(element)
            known = old.declarations.get(declaration.serial)
            view.declarations[declaration.serial] = known if known == declaration else declaration
        elif element.tag == q("pnp-location"):
            location = model.location_from_xml(element)
            view.locations[location.location] = location
        elif parent is not None and parent.tag == q("pnp"):
            serial = model.child_text(element, "serial")
            if element.tag == q("unclaimed"):
                view.unclaimed[serial] = model.unclaimed_from_xml(element)
            elif element.tag == q("stack-member"):
                view.aliases[serial] = model.child_text(element, "stack")
            else:
                work_element = element.find(q("work"))
                known_work = old.work.get(serial)
                work: Work | None
                if known_work is not None and work_element is not None and \
                        model.child_text(work_element, "revision") == known_work.revision:
                    work = known_work  # the revision digests the steps: unchanged, nothing to build
                else:
                    work = model.work_from_xml(work_element)
                status = model.status_from_xml(element.find(q("status")))
                if work is not None:
                    view.work[serial] = work
                if status is not None:
                    view.status[serial] = status
                if work is None and status is None:
                    view.empty.add(serial)
        else:
            continue  # a device inside something else: not ours
        element.clear()
        while element.getprevious() is not None and parent is not None:
            del parent[0]
    view.stacks = stacks_of(view.declarations)
    view.find_bindings()
    return view


# --------------------------------------------------------------------------- edits


def change_problem(change: Change) -> str:
    """Why the controller would refuse ``change`` for sure, before asking it (empty: nothing known)."""
    return checked_edit(change)[0]


def checked_edit(change: Change) -> tuple[str, bytes]:
    """Why the controller would refuse ``change`` for sure (empty: nothing known), and else its edit under ``/pnp``
    (:func:`rendered_edit`): rendered once, when the change is decided, and kept for the flush."""
    if not model.is_serial(change.serial):
        return f"serial {change.serial!r} is not a valid serial number", b""
    if change.member_of and not model.is_serial(change.member_of):
        return f"stack {change.member_of!r} is not a valid serial number", b""
    try:
        return "", rendered_edit(change)
    except ValueError as exc:  # lxml refuses text that cannot be XML
        return f"not representable in XML: {exc}", b""


def rendered_edit(change: Change) -> bytes:
    """What ``change`` writes under ``/pnp``, as UTF-8 without namespace declarations (the ``<pnp>`` around it has
    them), but for the removal of a status (:func:`_status_removal`: it depends on what running holds at the
    flush)."""
    serial = f"<serial>{escape_text(change.serial)}</serial>"
    parts = []
    if change.status is not None:
        element = model.status_to_xml(change.status)
        element.set(f"{{{NETCONF_NS}}}operation", "replace")
        parts.append(f"<device>{serial}{_without_namespaces(etree.tostring(element, encoding='unicode'))}</device>")
        if change.status.last_contact is not None:  # the device took the reset (if any): its request goes
            parts.append(f'<reset nc:operation="remove">{serial}</reset>')
    if change.unclaimed is not None:
        element = model.unclaimed_to_xml(change.unclaimed)
        element.set(f"{{{NETCONF_NS}}}operation", "replace")
        parts.append(_without_namespaces(etree.tostring(element, encoding="unicode")))
    if change.member_of:
        parts.append(f'<stack-member nc:operation="replace">{serial}<stack>{escape_text(change.member_of)}</stack></stack-member>')
    # The unclaimed rule; "remove" is quiet when there is nothing to remove.
    if change.removes_unclaimed:
        parts.append(f'<unclaimed nc:operation="remove">{serial}</unclaimed>')
    return "".join(parts).encode()


def _without_namespaces(text: str) -> str:
    # lxml writes xmlns on each element it serialises; the one declaration on <pnp> is enough.
    return text.replace(f' xmlns="{PNP_NS}"', "").replace(f' xmlns:nc="{NETCONF_NS}"', "")


def _status_removal(change: Change, has_status: Callable[[str], bool]) -> bytes:
    # Only where there is one: a merge into /pnp/device would create an empty entry for every stranger.
    if change.removes_status and has_status(change.serial):
        return f'<device><serial>{escape_text(change.serial)}</serial><status nc:operation="remove"/></device>'.encode()
    return b""


_EDIT_OPENING = f'<pnp xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}">'.encode()
_EDIT_CLOSING = b"</pnp>"


def edit_pieces(changes: Iterable[tuple[Change, bytes]], has_status: Callable[[str], bool]) -> list[bytes]:
    """The edit-config body that records ``changes`` (each with its :func:`rendered_edit`) under ``/pnp``, in pieces
    the session writes one after the other: a flush of tens of thousands of statuses is never joined into one
    string.  ``has_status`` says which serials have a status in running to remove."""
    pieces = [_EDIT_OPENING]
    for change, text in changes:
        pieces.append(text)
        if removal := _status_removal(change, has_status):
            pieces.append(removal)
    pieces.append(_EDIT_CLOSING)
    return pieces


def status_edit(changes: Iterable[Change], has_status: Callable[[str], bool] = lambda serial: True) -> str:
    """The edit-config body that records ``changes`` under ``/pnp``, whole (for reading and tests)."""
    return b"".join(edit_pieces(((change, rendered_edit(change)) for change in changes), has_status)).decode()


def _needless(view: View, serial: str, cutoff: str) -> bool:
    """A ``/pnp/device`` entry nobody declares that is empty, or whose device was last seen before ``cutoff`` (a
    ``last-contact`` text; never, for a status without one)."""
    if serial in view.declarations or serial in view.work:
        return False
    status = view.status.get(serial)
    if status is None:
        return serial in view.empty
    return status.last_contact is not None and model.format_time(status.last_contact) < cutoff


class _Write(NamedTuple):
    """A change on its way to the controller, with its edit rendered once (:func:`rendered_edit`)."""

    change: Change
    edit: bytes


class _Refused(Exception):
    """The controller refused the data of a batch of one."""


# --------------------------------------------------------------------------- the store


class ClixonStore(StoreBase):
    """Store backed by a Clixon controller; see the module docstring."""

    def __init__(
        self,
        sockpath: str = DEFAULT_SOCKET,
        journal_path: str | None = "pnp-service.journal",
        read_only: bool = False,
        refresh_seconds: float = 30.0,
        retry_max_seconds: float = 30.0,
        session_factory: Callable[[str], Session] | None = None,
        start_threads: bool = True,
        unclaimed_policy: UnclaimedPolicy | None = None,
        write_through: bool = False,
        write_through_seconds: float = WRITE_THROUGH_SECONDS,
    ):
        self.sockpath = sockpath
        self.write_through = write_through
        self.write_through_seconds = write_through_seconds
        self._committed = threading.Condition()  # notified after each flush: write-through answers wait on it
        self._late_writes = 0  # write-through answers that went out before their commit (logged once per outage)
        self.unclaimed_policy = unclaimed_policy or UnclaimedPolicy()
        self._counters = {"unclaimed_dropped": 0, "unclaimed_expired": 0, "lookups_skipped": 0}
        self._lookups_paused_until = 0.0
        self._forgotten = ForgottenLog(self.unclaimed_policy)
        self._expiry_checked: dt.datetime | None = None
        self._looked: dict[str, float] = {}  # serial -> when it was last looked up on its own (monotonic)
        self._reload_error = ""
        self._resets_seen: set[str] = set()  # /pnp/reset entries already looked at
        self._binds: dict[str, Location] = {}  # switches matched to a location, to declare (make_bindings)
        self.refresh_seconds = refresh_seconds
        self.retry_max_seconds = retry_max_seconds
        self._session_factory = session_factory or Session
        # A read-only store (pnp-service status) has no journal: it must never commit a listener's writes.
        self.read_only = read_only
        self._journal = Journal(journal_path or "pnp-service.journal")
        self._lock = threading.Lock()  # guards _pending, _view's dicts and _recent: held only for dict work
        self._serial_locks = [threading.Lock() for _ in range(64)]
        self._reader_lock = threading.Lock()  # the reading session: one round trip at a time
        self._flush_lock = threading.Lock()
        self._flush_rest_until = 0.0  # monotonic: the next commit starts no sooner (FLUSH_PACE)
        self._appends: GroupCommit[list[_Write]] = GroupCommit(self._append_batch)
        self._pending: dict[str, Change] = {}
        self._edits: dict[str, bytes] = {}  # each pending change's edit, rendered when it was decided
        self._generation = 0  # counts flushes; a refresh re-applies what was committed while it fetched
        self._recent: list[tuple[int, Change]] = []
        self._reader: Session | None = None
        self._refresher: Session | None = None  # the full refresh's own session
        self._refresher_lock = threading.Lock()
        self._writer: Session | None = None
        self._view = View()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._refresh_due = threading.Event()
        self._watcher: Session | None = None
        self.last_error = ""
        self.quarantined = 0
        if not read_only:
            self._pending = self._journal.replay()
            self._heal()
        # Subscribed before the first read, the watcher needs no second one when it starts (a second full read,
        # seconds of CPU at 10,000 declared, while the first devices are served).
        subscribed = self._announcements() if start_threads and not read_only else None
        try:
            self.refresh()  # fails here, with the reason, when the controller cannot be reached at start
        except BaseException:
            if subscribed is not None:
                subscribed.close()
            raise
        self._threads: list[threading.Thread] = []
        if start_threads and not read_only:
            loops = (("pnp-clixon-refresh", self._refresh_loop, ()), ("pnp-clixon-flush", self._flush_loop, ()),
                     ("pnp-clixon-watch", self._watch_loop, (subscribed,)),
                     ("pnp-clixon-requests", self._requests_loop, ()))
            for name, target, args in loops:
                thread = threading.Thread(target=target, args=args, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    # ------------------------------------------------------------------ reading

    def _target(self, serial: str) -> str:
        view = self._view
        pending = self._pending.get(serial)
        aliases = {serial: pending.member_of} if pending is not None and pending.member_of else view.aliases
        return resolve(serial, view.declarations, view.stacks, aliases)

    def _record(self, serial: str) -> DeviceRecord:
        """The record ``serial`` belongs to (its own, or its stack's), as running has it plus what is pending."""
        view = self._view
        target = self._target(serial)
        record = DeviceRecord(target, view.declarations.get(target), view.work.get(target), view.status.get(target),
                              view.unclaimed.get(target) if target == serial else None, "", serial, view.stacks)
        change = self._pending.get(target)
        if change is not None:
            record = change.applied_to(record)
        if record.declaration is None and view.bound:
            at = self._binds.get(serial)
            location = view.locations.get(at) if at is not None else None
            if location is not None:  # matched: declared within a second or two (make_bindings); until then, wait
                return dataclasses.replace(record, declaration=location.for_serial(serial),
                                           planning_error=f"bound to location {at}: being declared in the controller")
            record = dataclasses.replace(record, locations=view.bound, location_declarations=view.locations)
        return record

    def load(self, serial: str) -> DeviceRecord:
        return self._record(serial)

    def peek(self, serial: str) -> DeviceRecord | None:
        record = self._record(serial)  # the copy of running and the pending writes: memory only
        if self.write_through and self._shared(record):
            return None  # another listener may have moved it since: read from the controller first
        return None if self._relook_due(record) else record

    def _shared(self, record: DeviceRecord) -> bool:
        """A declared device on its way (not settled in error or provisioned): any listener may have just moved it."""
        status = record.status
        return record.declaration is not None and (status is None or status.state not in _RELOOKED_STATES)

    def _relook_due(self, record: DeviceRecord) -> bool:
        """Whether a settled device is looked up before it is answered: not while the controller is known to be busy
        (a lookup that waited in vain, or this listener's own commit: the controller answers no one meanwhile)."""
        status = record.status
        if status is None or status.state not in _RELOOKED_STATES:
            return False
        now = time.monotonic()
        return (now - self._looked.get(record.serial, float("-inf")) >= RELOOK_SECONDS
                and now >= self._lookups_paused_until and not self._flush_lock.locked())

    def _fetch(self, xpath: str, patience: float | None = None) -> View:
        """One get-config from running, outside every lock but the reader session's."""
        return view_from_reply(self._read_running(xpath, patience))

    def _read_running(self, xpath: str, patience: float | None = None) -> bytes | bytearray:
        """One get-config from running on the reader session (one round trip at a time); a broken session goes.
        With ``patience``, waits at most that long for the session and then for each read of the reply."""
        if not self._reader_lock.acquire(timeout=-1 if patience is None else patience):
            raise ControllerUnavailable(f"the controller did not answer within {patience:g} s (the reading session "
                                        "waits on it)")
        try:
            if self._reader is None:
                self._reader = self._session_factory(self.sockpath)
            if patience is None:
                return self._reader.get_config_raw("running", xpath)
            with self._reader.answer_within(patience):
                return self._reader.get_config_raw("running", xpath)
        except StoreUnavailable:
            if self._reader is not None:
                self._reader.close()  # a reply not read to its end leaves the session out of step
                self._reader = None
            raise
        finally:
            self._reader_lock.release()

    def _fetch_all(self, previous: View) -> View:
        """Everything the copy holds, parsed as the reply arrives (never whole in memory: 10 MB at 10,000 devices),
        on a session of its own so that a device's own lookup never waits behind it."""
        with self._refresher_lock:
            if self._refresher is None:
                self._refresher = self._session_factory(self.sockpath)
            try:
                return view_from_events(iterparse_pieces(self._refresher.get_config_pieces("running", _ALL),
                                                         tag=_VIEW_TAGS), previous)
            except BaseException:
                self._refresher.close()  # a reply read halfway leaves the session out of step
                self._refresher = None
                raise

    def refresh(self) -> None:
        """Fetch declarations and ``/pnp`` from running, then swap the copy in."""
        generation = self._generation
        fresh = self._fetch_all(self._view)
        with self._lock:
            for committed_at, change in self._recent:
                if committed_at > generation:  # committed while we fetched: running had not got it yet
                    fresh.apply(change)
            self._recent = [(g, c) for g, c in self._recent if g > generation]
            self._view = fresh

    def _reload(self, serial: str, patience: float | None = None) -> None:
        """Bring one serial's record up to date (one round trip); quiet when the controller cannot answer.  With
        ``patience`` (a device waits for the answer), at most that long, and not at all during a pause after a
        lookup that waited in vain."""
        self._reload_all([serial], patience)

    def _reload_all(self, serials: list[str], patience: float | None = None) -> None:
        """:meth:`_reload` for several serials in one round trip: the devices of one batch that are due a relook are
        looked up together, not one get-config each behind one another."""
        serials = [serial for serial in serials if model.is_serial(serial)]
        if not serials:
            return
        view = self._view
        now = time.monotonic()
        for serial in serials:  # looked at even when skipped: a busy controller is not asked again at every poll
            if serial in view.declarations or serial in view.status:  # a stranger's answer asks to look too: no
                self._looked[serial] = now                             # entry is kept per made-up serial
        if patience is not None and now < self._lookups_paused_until:
            self._counters["lookups_skipped"] += len(serials)
            return
        generation = self._generation
        try:
            fresh = self._fetch(by_serials(_ENTRIES, serials), patience)
        except StoreUnavailable as exc:
            if patience is not None:
                self._lookups_paused_until = time.monotonic() + LOOKUP_PAUSE_SECONDS
                self._counters["lookups_skipped"] += len(serials)
            if "did not answer within" in str(exc):  # busy, not down: expected with large commits
                log.debug("%s decided on the last copy: %s", ", ".join(serials), exc)
                return
            if str(exc) != self._reload_error:  # once per outage, not once per poll
                log.warning("cannot reload %s from the controller, deciding on the last copy: %s",
                            ", ".join(serials), exc)
            self._reload_error = str(exc)
            return
        self._reload_error = ""
        looked = set(serials)
        with self._lock:
            view = self._view
            for table in ("declarations", "work", "status"):
                current = getattr(view, table)
                for serial in serials:
                    current.pop(serial, None)
                current.update((serial, entry) for serial, entry in getattr(fresh, table).items() if serial in looked)
            if any(declaration.stack for declaration in fresh.declarations.values()):
                view.stacks.update(stacks_of(fresh.declarations))
            if view.locations:
                view.find_bindings()
            for committed_at, change in self._recent:
                if committed_at > generation and change.serial in looked:
                    view.apply(change)

    def _bind(self, serial: str, location: Location) -> None:
        with self._lock:
            if serial in self._binds or len(self._binds) < max(16, len(self._view.locations)):  # bound: one a location
                self._binds[serial] = location

    def make_bindings(self) -> list[str]:
        """Declare each switch matched to a location as that location's declaration (``located`` names it), in a
        controller commit of its own, as ``pnp claim`` does: the service module plans it in the same transaction.
        Checked under the candidate lock: a location another declaration holds is never taken.  The serials
        declared."""
        with self._lock:
            binds, self._binds = self._binds, {}
        if not binds or self.read_only:
            return []
        made = []
        with self._session() as session:
            for serial, at in binds.items():
                location = self._view.locations.get(at)
                if location is None:
                    continue  # no longer declared
                with candidate_locked(session):
                    held = view_from_reply(session.get_config_raw(
                        "running", f"/ctrl:services/pnp:pnp-device[pnp:serial='{serial}'] | "
                                   "/ctrl:services/pnp:pnp-device/pnp:located"))
                    holder = next((s for s, d in held.declarations.items() if d.located and Location(*d.located) == at), "")
                    if serial in held.declarations or holder:
                        log.warning("%s not bound to %s: %s", serial, at,
                                    f"it is bound to {holder}" if holder else "the serial is declared already")
                        continue
                    element = model.declaration_to_xml(location.for_serial(serial))
                    element.set(f"{{{NETCONF_NS}}}operation", "create")
                    services = etree.Element(f"{{{CONTROLLER_NS}}}services", nsmap={None: CONTROLLER_NS})
                    services.append(element)
                    refused = controller_commit_edit(session, etree.tostring(services, encoding="unicode"))
                    if refused is not None:
                        log.error("%s could not be declared as the switch at %s: %s", serial, at, refused)
                        continue
                log.info("%s is the switch at %s: declared as %s, provisioned from its next poll", serial, at,
                         location.declaration.hostname or "its location's declaration")
                made.append(serial)
        for serial in made:
            self._reload(serial)
        return made

    def look_at_requests(self) -> Acted:
        """Read the operator's requests (one small round trip) and act on what was asked since the last read: each
        device reset is looked up at once (its record from the controller, and no older write of ours left to undo
        the reset); claims are made and lists cleared (operator_requests.py)."""
        self.make_bindings()
        data = self._read_running(_REQUESTS)
        resets = self._look_at_resets(data)
        return Acted(resets, self._make_claims(claims_in(data)), self._clear(clears_in(data)),
                     self._free_locations(resets))

    def _look_at_resets(self, data: bytes | bytearray) -> list[str]:
        requested = {serial for _, element in iterparse(data, tag=q("reset"))
                     if model.is_serial(serial := model.child_text(element, "serial"))}
        new = sorted(requested - self._resets_seen)
        self._resets_seen = requested  # an entry goes with the device's next status: a later reset is new again
        for serial in new:
            self._drop_pending(serial)
            self._reload(serial)
            log.info("%s was reset in the controller: it starts over at its next poll", serial)
        return new

    def _free_locations(self, resets: list[str]) -> list[str]:
        """A reset switch that was bound to a location frees it, as on the embedded store: the declaration the
        listener made from the location is deleted with the reset request, in one controller commit (the service
        module drops its work); the next switch found there (the same one or a replacement) is bound again.
        Checked under the candidate lock: only a declaration that still names its location is deleted."""
        with self._lock:
            bound = [serial for serial in resets if (d := self._view.declarations.get(serial)) is not None and d.located]
        if not bound or self.read_only:
            return []
        freed = []
        with self._session() as session:
            for serial in bound:
                with candidate_locked(session):
                    held = view_from_reply(session.get_config_raw(
                        "running", f"/ctrl:services/pnp:pnp-device[pnp:serial='{serial}']")).declarations.get(serial)
                    if held is None or not held.located:
                        continue
                    edit = (f'<services xmlns="{CONTROLLER_NS}" xmlns:nc="{NETCONF_NS}"><pnp-device xmlns="{PNP_NS}" '
                            f'nc:operation="remove"><serial>{serial}</serial></pnp-device></services>'
                            f'<pnp xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}"><reset nc:operation="remove"><serial>'
                            f"{serial}</serial></reset></pnp>")
                    refused = controller_commit_edit(session, edit)
                    if refused is not None:
                        log.error("%s was reset, but its location %s could not be freed: %s", serial,
                                  " ".join(held.located), refused)
                        continue
                log.info("%s was reset: location %s freed; the next switch found there is bound and provisioned",
                         serial, " ".join(held.located))
                freed.append(serial)
        for serial in freed:
            self._reload(serial)
        return freed

    def _make_claims(self, claims: list[Claim]) -> list[str]:
        claims = [claim for claim in claims if not claim.error]
        if not claims or self.read_only:
            return []
        with self._session() as session:
            made = make_claims(session, claims)
        for serial in made:
            self._reload(serial)  # its declaration and work, planned in the claim's transaction
        return made

    def _clear(self, requests: list[str]) -> dict[str, int]:
        if not requests or self.read_only:
            return {}
        with self._session() as session:
            removed = clear_lists(session, requests)
        if "clear-unclaimed" in requests:
            with self._lock:
                self._view.unclaimed.clear()
        for name, count in sorted(removed.items()):
            log.info("cleared in the controller: %d %s entries", count, name)
        return removed

    @contextlib.contextmanager
    def _session(self) -> Iterator[Session]:
        """A session of its own, for an operator's request (rare): the reader and the flusher keep theirs."""
        session = self._session_factory(self.sockpath)
        try:
            yield session
        finally:
            session.close()

    def _drop_pending(self, serial: str) -> None:
        """Forget a write of ours decided before a reset: committed later, it would undo the reset."""
        with self._journal.lock:
            with self._lock:
                if self._pending.pop(serial, None) is not None:
                    del self._edits[serial]
                    self._journal.rewrite(self._pending)

    # ------------------------------------------------------------------ deciding

    def update(self, serial: str, decide: Callable[[DeviceRecord], D]) -> D:
        if self.read_only:
            raise StoreError("this Clixon store was opened read-only")
        with self._serial_locks[self._lock_index(self._target(serial))]:
            decision, changes = self._decided(serial, decide)
            if changes:
                self._appends.submit(changes)  # fsynced (with other polls' changes) before the device hears
                self._wake.set()
                change = changes[0].change
                if self.write_through and (change.status is not None or change.member_of):
                    self._await_commit(change)  # under the serial's lock: its next message is decided after this
        return decision

    @property
    def updates_many_in_one_commit(self) -> bool:
        """Without write-through, :meth:`update_many` journals its changes with one fsync: the server hands it the
        writes of many devices at once.  With it, each update waits for its own commit to the controller."""
        return not self.write_through

    def update_many(self, updates: list[tuple[str, Callable[[DeviceRecord], D]]]) -> list[D | Exception]:
        """Each update as :meth:`update`, the changes journaled together (one fsync) under every serial's lock.  A
        device's second message in the batch, a newcomer stranger and a stack member are journaled at once: what
        comes next is decided on them (and the caps count them)."""
        if self.read_only:
            raise StoreError("this Clixon store was opened read-only")
        if self.write_through:
            return super().update_many(updates)
        results: list[D | Exception] = []
        targets = [self._target(serial) for serial, _ in updates]
        with contextlib.ExitStack() as held:
            for index in sorted({self._lock_index(target) for target in targets}):
                held.enter_context(self._serial_locks[index])
            due = [target for target in dict.fromkeys(targets) if self._relook_due(self._record(target))]
            if len(due) > 1:  # one round trip for the batch; each is then decided as fresh
                self._reload_all(due[:RELOOK_BATCH_MAX], self._relook_patience)
            waiting: list[_Write] = []
            owners: list[int] = []  # the results whose changes wait
            for (serial, decide), target in zip(updates, targets):
                if target in (targets[i] for i in owners):
                    self._journal_together(waiting, owners, results)
                try:
                    decision, changes = self._decided(serial, decide)
                except Exception as exc:  # noqa: BLE001 - reported per update, as the caller asked
                    results.append(exc)
                    continue
                results.append(decision)
                if changes:
                    waiting += changes
                    owners.append(len(results) - 1)
                    if len(changes) > 1 or changes[0].change.member_of or changes[0].change.unclaimed is not None:
                        self._journal_together(waiting, owners, results)
            self._journal_together(waiting, owners, results)
        return results

    def _journal_together(self, waiting: list[_Write], owners: list[int], results: list) -> None:
        if waiting:
            try:
                self._appends.submit(list(waiting))
            except Exception as exc:  # noqa: BLE001 - none of them is durable: each caller hears why
                for index in owners:
                    results[index] = exc
            self._wake.set()
        waiting.clear()
        owners.clear()

    def _lock_index(self, target: str) -> int:
        return zlib.crc32(target.encode()) % len(self._serial_locks)

    @property
    def _lookup_patience(self) -> float:
        # Write-through: the decision is only right on the controller's record (another listener may have moved the
        # device): it waits as long as an answer waits for its commit.
        return self.write_through_seconds if self.write_through else LOOKUP_WAIT_SECONDS

    @property
    def _relook_patience(self) -> float:
        return self.write_through_seconds if self.write_through else RELOOK_WAIT_SECONDS

    def _decided(self, serial: str, decide: Callable[[DeviceRecord], D]) -> tuple[D, list[_Write]]:
        """Under the serial's lock: the decision, and the changes to journal for it (none when it changes nothing,
        or the change is refused here)."""
        record = self._record(serial)
        relook = self._relook_due(record)
        looked = relook or (self.write_through and record.declaration is not None)
        if looked:
            self._reload(record.serial, self._relook_patience if relook else self._lookup_patience)
            record = self._record(serial)
        decision = decide(record)
        if decision.recheck and not looked:
            self._reload(record.serial, self._lookup_patience)
            record = self._record(serial)
            decision = decide(record)
        change = Change.of(record.serial, decision)
        if change is None:
            return decision, []
        if change.located_at:  # made by the requests loop: a controller commit, never on a device's way
            self._bind(record.serial, getattr(decision, "located_at"))
            return decision, []
        problem, edit = checked_edit(change)
        if problem:
            self._quarantine(change, problem)
            return decision, []
        if change.member_of and self._stack_full(change):
            log.error("stack %s has %d recorded members already: %s is not recorded as another (it stays "
                      "unclaimed)", change.member_of, STACK_MEMBERS_MAX, change.serial)
            return decision, []
        room = self._make_room(change) if change.unclaimed is not None and record.unclaimed is None else []
        return decision, [_Write(change, edit), *(_Write(forget, rendered_edit(forget)) for forget in room)]

    def _await_commit(self, change: Change) -> None:
        """Wait (up to ``write_through_seconds``) until the flusher has committed ``change`` to running."""
        deadline = time.monotonic() + self.write_through_seconds
        with self._committed:
            while self._pending.get(change.serial) is change:
                left = deadline - time.monotonic()
                if left <= 0:
                    self._late_writes += 1
                    if self._late_writes == 1:
                        log.warning("write-through: %s answered before its status reached the controller (%s); "
                                    "it waits in the journal, and another listener may repeat a step until it is "
                                    "committed", change.serial, self.last_error or "commit still running")
                    return
                self._committed.wait(left)
        self._late_writes = 0

    def _stack_full(self, change: Change) -> bool:
        with self._lock:
            members = {serial for serial, stack in self._view.aliases.items() if stack == change.member_of}
            members |= {serial for serial, pending in self._pending.items() if pending.member_of == change.member_of}
        members.discard(change.serial)
        return len(members) >= STACK_MEMBERS_MAX

    def _append_batch(self, jobs: list[list[_Write]]) -> list[BaseException | None]:
        with self._journal.lock:
            self._journal.append(write.change for writes in jobs for write in writes)
            with self._lock:
                for writes in jobs:
                    for change, edit in writes:
                        self._pending[change.serial] = change
                        self._edits[change.serial] = edit
        return [None] * len(jobs)

    def _make_room(self, newcomer: Change) -> list[Change]:
        """What to forget for a stranger not seen before: entries unseen for the policy's days (looked at once a
        minute of the listener's clock) and, at the size limit, the longest unseen (1% at a time, so the scan is
        rare)."""
        policy, seen = self.unclaimed_policy, newcomer.unclaimed.last_seen if newcomer.unclaimed else None
        if seen is None:
            return []
        with self._lock:
            full = len(self._view.unclaimed) + len(self._pending) >= policy.max_entries
            due = self._expiry_checked is None or (seen - self._expiry_checked).total_seconds() >= 60
            if not (full or due):
                return []
            entries = dict(self._view.unclaimed)
            for serial, pending in self._pending.items():
                if pending.unclaimed is not None:
                    entries[serial] = pending.unclaimed
                elif pending.removes_unclaimed:
                    entries.pop(serial, None)
            if due:
                self._expiry_checked = seen
        entries.pop(newcomer.serial, None)
        cutoff = policy.expired_before(seen)
        expired = [serial for serial, entry in entries.items() if model.format_time(entry.last_seen) < cutoff]
        for serial in expired:
            del entries[serial]
        excess = len(entries) + 1 - policy.max_entries
        dropped: list[str] = []
        if excess > 0:
            batch = max(excess, policy.max_entries // 100, 1)
            dropped = [serial for serial, _ in heapq.nsmallest(batch, entries.items(),
                                                              key=lambda item: model.format_time(item[1].last_seen))]
        self._counters["unclaimed_expired"] += len(expired)
        self._counters["unclaimed_dropped"] += len(dropped)
        self._forgotten.add(len(dropped))
        return [Change(serial, forget=True) for serial in expired + dropped]

    def snapshot(self) -> Snapshot:
        with self._lock:
            view, pending = self._view, dict(self._pending)
            serials = sorted(set(view.declarations) | set(view.work) | set(view.status)
                             | {s for s, c in pending.items() if c.status is not None})
            unclaimed_serials = sorted(set(view.unclaimed) | {s for s, c in pending.items() if c.unclaimed is not None})
            records = [self._record(s) for s in serials]
            entries = [r.unclaimed for r in map(self._record, unclaimed_serials) if r.unclaimed is not None]
        return Snapshot(tuple(r for r in records if r.declaration or r.work or r.status), tuple(entries), self.problems())

    def pending_writes(self) -> int:
        with self._lock:
            return len(self._pending)

    def controller_error(self) -> str | None:
        return self.last_error

    def counters(self) -> Mapping[str, int]:
        return dict(self._counters)

    def problems(self) -> tuple[str, ...]:
        problems = []
        if self.last_error:
            problems.append(f"controller: {self.last_error}")
        if self.quarantined:
            problems.append(f"{self.quarantined} writes were refused by the controller and set aside in "
                            f"{self._journal.rejected_path}")
        return tuple(problems)

    def reset(self, serial: str) -> str:
        """Delete a device's status in running now (a NETCONF commit of its own)."""
        if not model.is_serial(serial):
            raise UnknownSerial(f"{serial!r} is not a serial number")
        self._reload(serial)
        record = self._record(serial)
        if record.declaration is None and record.status is None:
            raise UnknownSerial(f"{serial} is not declared under services pnp-device and has no status")
        if record.status is None:
            return f"{serial} has no status yet; nothing to reset"
        edit = (f'<pnp xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}"><device><serial>{serial}</serial>'
                f'<status nc:operation="remove"/></device><reset><serial>{serial}</serial></reset></pnp>')
        session = self._session_factory(self.sockpath)
        try:
            for attempt in range(20):  # a listener's status commit holds the candidate for milliseconds
                try:
                    commit_edit(session, edit)
                    break
                except RpcError as exc:
                    if not exc.busy or attempt == 19:
                        raise
                    time.sleep(0.25)
        except RpcError as exc:
            if exc.busy:
                raise StoreUnavailable(
                    "the controller's candidate holds uncommitted edits (yours or another session's; a commit would "
                    f"publish them) or is locked: commit or discard them in clixon_cli, then reset again ({exc})"
                ) from None
            raise StoreUnavailable(f"the controller refused the reset: {exc}") from None
        finally:
            session.close()
        self._drop_pending(serial)
        with self._lock:
            self._view.status.pop(serial, None)
        return f"{serial}: status cleared; the device starts over at its next poll (every listener looks at once)"

    # ------------------------------------------------------------------ writing

    def flush(self) -> bool:
        """Commit what is pending; True when nothing is left.  Raises nothing: failures are retried."""
        try:
            return self._flush()
        finally:
            with self._committed:
                self._committed.notify_all()

    def _flush(self) -> bool:
        with self._flush_lock:
            with self._lock:
                batch = dict(self._pending)
                writes = [_Write(change, self._edits[serial]) for serial, change in batch.items()]
            if not batch:
                return True
            refused: dict[str, str] = {}
            began = time.monotonic()
            try:
                self._commit_isolating(writes, refused)
            except StoreUnavailable as exc:
                self._drop_writer()
                if str(exc) != self.last_error:
                    log.warning("status not committed yet (%d waiting in the journal), will retry: %s", len(batch), exc)
                self.last_error = str(exc)
                return False
            with self._journal.lock:
                with self._lock:
                    self._generation += 1
                    for serial, change in batch.items():
                        if self._pending.get(serial) is change:
                            del self._pending[serial]
                            del self._edits[serial]
                        if serial not in refused:
                            self._view.apply(change)
                            self._recent.append((self._generation, change))
                    left = dict(self._pending)
                self._journal.rewrite(left)
            ended = time.monotonic()
            self._flush_rest_until = ended + FLUSH_PACE * (ended - began)
            for serial, reason in refused.items():
                self._quarantine(batch[serial], reason)
            if self.last_error:
                log.info("controller writes resumed")
                self.last_error = ""
            return not left

    def _commit_isolating(self, writes: list[_Write], refused: dict[str, str]) -> None:
        """Commit ``writes``; a batch the controller refuses is split until the refused changes are found."""
        if not writes:
            return
        try:
            self._commit(edit_pieces(writes, self._view.status.__contains__))
        except _Refused as exc:
            if len(writes) == 1:
                refused[writes[0].change.serial] = str(exc)
                return
            middle = len(writes) // 2
            self._commit_isolating(writes[:middle], refused)
            self._commit_isolating(writes[middle:], refused)

    def _commit(self, edit: list[bytes]) -> None:
        if self._writer is None:
            self._writer = self._session_factory(self.sockpath)
        for attempt in range(_BUSY_TRIES):
            try:
                commit_edit(self._writer, edit)
                return
            except RpcError as exc:
                if exc.rejects_data:
                    raise _Refused(str(exc)) from None
                if not exc.busy or attempt == _BUSY_TRIES - 1:
                    raise StoreUnavailable(f"controller busy: {exc}" if exc.busy else str(exc)) from None
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))  # another listener's commit, most likely

    def _drop_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _quarantine(self, change: Change, reason: str) -> None:
        self.quarantined += 1
        event(log, logging.ERROR, "write-refused", serial=change.serial, reason=reason,
              kept=self._journal.rejected_path, note="other devices are not affected")
        try:
            self._journal.quarantine(change, reason)
        except OSError as exc:
            log.error("cannot keep the refused write in %s: %s", self._journal.rejected_path, exc)

    def _heal(self) -> None:
        """Set aside, at start, journal entries no controller would take (written by an older version)."""
        bad = {}
        for serial, change in self._pending.items():
            problem, self._edits[serial] = checked_edit(change)
            if problem:
                bad[serial] = problem
        if not bad:
            if self._pending:
                log.info("journal %s: %d writes from before a restart wait to be committed", self._journal.path,
                         len(self._pending))
            return
        for serial, problem in bad.items():
            del self._edits[serial]
            self._quarantine(self._pending.pop(serial), problem)
        with self._journal.lock:
            self._journal.rewrite(self._pending)

    def sweep(self) -> list[str]:
        """Remove the ``/pnp/device`` entries nobody needs: empty ones (a declaration deleted before its device
        called in) and ``removed`` ones (a status without a declaration) unseen for the unclaimed policy's days.
        Checked again under the candidate lock, so an entry a commit just gave work is never touched.  The serials
        removed."""
        cutoff = self.unclaimed_policy.expired_before(dt.datetime.now(dt.timezone.utc))
        with self._lock:
            view = self._view
            candidates = {serial for serial in view.empty | set(view.status) if _needless(view, serial, cutoff)}
            candidates -= set(self._pending)
        if not candidates or self.read_only:
            return []
        serials = sorted(candidates)[:200]  # one modest transaction at a time; the rest at the next sweep
        with self._flush_lock:
            if self._writer is None:
                self._writer = self._session_factory(self.sockpath)
            with candidate_locked(self._writer) as session:
                fresh = view_from_reply(session.get_config_raw("running", by_serials(_ENTRIES, serials)))
                gone = [serial for serial in serials if _needless(fresh, serial, cutoff)]
                if gone:
                    body = "".join(f'<device nc:operation="remove"><serial>{serial}</serial></device>' for serial in gone)
                    session.edit_config(f'<pnp xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}">{body}</pnp>')
                    session.commit()
        with self._lock:
            for serial in gone:
                self._view.empty.discard(serial)
                self._view.status.pop(serial, None)
        if gone:
            log.info("removed %d /pnp/device entries nobody declares (never called in, or unseen for %d days): %s",
                     len(gone), self.unclaimed_policy.keep_days, ", ".join(gone[:10]) + (", ..." if len(gone) > 10 else ""))
        return gone

    # ------------------------------------------------------------------ background threads

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._refresh_due.wait(self.refresh_seconds)
            self._refresh_due.clear()
            if self._stop.is_set():
                break
            try:
                self.refresh()
            except StoreUnavailable as exc:
                if str(exc) != self.last_error:
                    log.warning("cannot refresh from the controller, serving the last copy: %s", exc)
                self.last_error = str(exc)
                continue
            try:
                self.sweep()
            except (StoreUnavailable, RpcError) as exc:  # busy (someone's edits): the next refresh sweeps
                log.debug("sweep of /pnp/device postponed: %s", exc)

    def _announcements(self) -> Session | None:
        """A session subscribed to the controller's transactions, or None (the controller down or refusing)."""
        try:
            watcher = self._session_factory(self.sockpath)
        except StoreUnavailable:
            return None
        try:
            watcher.subscribe("controller-transaction")
        except (StoreUnavailable, RpcError) as exc:
            log.info("controller notifications interrupted (%s); reconnecting", exc)
            watcher.close()
            return None
        return watcher

    def _watch_loop(self, subscribed: Session | None = None) -> None:
        """Refresh when the controller announces a transaction; reconnect when it restarts.  ``subscribed``: a
        session subscribed before the store's first read, which therefore missed nothing."""
        delay = 1.0
        while not self._stop.is_set():
            watcher, missed = (subscribed, False) if subscribed is not None else (self._announcements(), True)
            subscribed = None
            if watcher is None:
                self._stop.wait(delay)
                delay = Backoff(1.0, self.retry_max_seconds).after(delay)
                continue
            self._watcher = watcher
            if missed:
                self._refresh_due.set()  # (re)connected: whatever happened meanwhile is read now
            try:
                delay = 1.0
                while not self._stop.is_set():
                    if "controller-transaction" in watcher.next_notification():
                        self._refresh_due.set()
            except (StoreUnavailable, RpcError) as exc:
                log.info("controller notifications interrupted (%s); reconnecting", exc)
                self._stop.wait(delay)
            finally:
                watcher.close()

    def _requests_loop(self) -> None:
        while not self._stop.wait(REQUESTS_SECONDS):
            try:
                self.look_at_requests()
            except (StoreUnavailable, RpcError):
                pass  # the controller is down: the refresh loop says so; requests are read when it is back

    def flush_rest(self) -> float:
        """Seconds the flusher rests before its next commit (:data:`FLUSH_PACE`); none with write-through."""
        return 0.0 if self.write_through else max(0.0, self._flush_rest_until - time.monotonic())

    def _flush_loop(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            self._wake.wait(delay if self._pending else 5.0)
            self._wake.clear()
            if self._stop.wait(self.flush_rest()):
                break
            delay = 0.5 if self.flush() else Backoff(0.5, self.retry_max_seconds).after(delay)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._refresh_due.set()
        if self._watcher is not None:
            self._watcher.close()
        for thread in self._threads:
            thread.join(timeout=5)
        if not self.read_only:
            self.flush()
            self._journal.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._refresher_lock:
            if self._refresher is not None:
                self._refresher.close()
                self._refresher = None
        self._drop_writer()


__all__ = ["ClixonStore", "ControllerUnavailable", "View", "change_problem", "status_edit", "CONTROLLER_NS"]
