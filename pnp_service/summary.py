"""The summary ``show pnp`` reads in the controller's CLI: counts by state and a line of each device.

Owns building ``/pnp/summary`` from a store snapshot, with the states the operator
reads (:func:`pnp_service.views.shown_state`: ``pending`` for a declaration changed
since its device got it, the hand-off beside ``provisioned``), and writing only what
changed since the last write: the counts, the rows that changed (replaced), the
rows that went (removed), in one commit, at most every ``every_seconds`` (longer when
the controller's commits are slow: :meth:`SummaryWriter.next_wait`).  The first
write of a process replaces the whole summary, so rows left by an earlier run go.

The controller's CLI has no callback that runs a program, and clixon-pyapi answers
no RPCs: data the listener keeps in the tree, shown by the CLI's generic
``cli_show_config``, is the controller's own way (docs/controller.md).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import Counter
from typing import Callable, Mapping

from . import views
from .model import NETCONF_NS, PNP_NS, Handoff, format_time
from .steps import advice
from .stores.base import Snapshot, StoreError
from .xmlsafe import escape_text, visible

log = logging.getLogger(__name__)

#: A row's leaves, in the YANG's order.
ROW = ("state", "hostname", "step", "handoff", "error")
_STATE = ROW.index("state")
#: Counted states, in the YANG's order (``declared`` is their sum, ``unclaimed`` the strangers).
COUNTED = ("planned", "onboarding", "pending", "provisioned", "error", "planning-error", "removed")
#: A device-reported value is cut here: the summary is a view, the whole text is in ``show pnp device``.
VALUE_MAX = 160

#: A row's values in :data:`ROW`'s order ("" for a leaf left out): a tuple, not a dict, because the writer keeps
#: the last row of every device (10,000 at a large roll-out) to see what changed.
Row = tuple[str, ...]


def _cut(text: str) -> str:
    text = visible(text)
    return text if len(text) <= VALUE_MAX else text[:VALUE_MAX - 3] + "..."


def rows(snapshot: Snapshot) -> dict[str, Row]:
    """serial -> its row."""
    found = {}
    for record in snapshot.devices:
        shown = views.row(record, snapshot.declarations_known)
        error, status = shown["last-error"], record.status
        if status is not None and status.error.code:
            error = f"{error}; {advice(status.error.code, status.error.message)}"
        found[record.serial] = tuple(_cut(value) for value in (shown["state"], shown["hostname"], shown["step"],
                                                                shown["handoff"], error))
    return found


def counts(snapshot: Snapshot, by_serial: Mapping[str, Row]) -> dict[str, int]:
    states = Counter(row[_STATE] for row in by_serial.values())
    handoffs = Counter(str(r.status.handoff.state) for r in snapshot.devices
                       if r.status is not None and r.status.handoff.state)
    counted = {state: states[state] for state in COUNTED}
    declared = sum(count for state, count in counted.items() if state != "removed")
    return {"declared": declared, **counted, "unclaimed": len(snapshot.unclaimed),
            **{f"handoff-{state}": handoffs[str(state)] for state in (Handoff.PENDING, Handoff.MANAGED, Handoff.FAILED)}}


def edit(counted: Mapping[str, int], changed: Mapping[str, Row], removed: list[str], updated: dt.datetime,
         whole: bool) -> str:
    """The edit-config body that writes the summary (``whole``: replaces it, rows of earlier runs included).

    Written as text, not built as a tree: at 10,000 devices a roll-out changes thousands of rows between two writes,
    and a tree of them is tens of thousands of nodes the listener would hold only to serialize them."""
    def leaf(name: str, value: str) -> str:
        return f"<{name}>{escape_text(value)}</{name}>"

    replace, remove = ' nc:operation="replace"', ' nc:operation="remove"'
    row_operation = "" if whole else replace  # a whole summary is replaced at once, rows and all
    parts = [f'<pnp xmlns="{PNP_NS}" xmlns:nc="{NETCONF_NS}"><summary{replace if whole else ""}>',
             leaf("updated", format_time(updated))]
    for name, value in counted.items():  # a count of nothing is left out, so show pnp reads short
        if value or name in ("declared", "unclaimed"):
            parts.append(leaf(name, str(value)))
        elif not whole:
            parts.append(f"<{name}{remove}/>")  # quiet if absent
    for serial, row in sorted(changed.items()):
        parts.append(f"<device{row_operation}>{leaf('serial', serial)}")
        parts.extend(leaf(name, value) for name, value in zip(ROW, row) if value)
        parts.append("</device>")
    parts.extend(f"<device{remove}>{leaf('serial', serial)}</device>" for serial in sorted(removed))
    parts.append("</summary></pnp>")
    return "".join(parts)


class SummaryWriter:
    """Keeps ``/pnp/summary`` in step with a store, from a thread of its own (:meth:`start`).

    ``commit(edit)`` makes one edit-config body durable in running (raising :class:`StoreError` when it cannot:
    the controller down or busy; the same summary is tried again at the next turn)."""

    def __init__(self, snapshot: Callable[[], Snapshot], commit: Callable[[str], None], every_seconds: float = 5.0,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)):
        self._snapshot, self._commit, self.every_seconds, self._clock = snapshot, commit, every_seconds, clock
        self._written: dict[str, Row] | None = None  # None: nothing written by this process yet
        self._counted: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = ""
        self.last_commit_seconds = 0.0

    def write_once(self) -> bool:
        """Write what changed since the last write; True when something was committed."""
        snapshot = self._snapshot()
        current = rows(snapshot)
        counted = counts(snapshot, current)
        whole = self._written is None
        before = self._written or {}
        changed = {serial: row for serial, row in current.items() if before.get(serial) != row}
        removed = [serial for serial in before if serial not in current]
        if not whole and not changed and not removed and counted == self._counted:
            return False
        began = time.monotonic()
        try:
            self._commit(edit(counted, current if whole else changed, [] if whole else removed, self._clock(), whole))
            self.last_commit_seconds = time.monotonic() - began
        except StoreError as exc:
            if str(exc) != self._failing:
                log.warning("show pnp's summary not written (tried again in %g s): %s", self.every_seconds, exc)
            self._failing = str(exc)
            return False
        self._failing = ""
        self._written, self._counted = current, counted
        return True

    def start(self) -> SummaryWriter:
        self._thread = threading.Thread(target=self._run, name="pnp-summary", daemon=True)
        self._thread.start()
        return self

    def next_wait(self) -> float:
        """Seconds to the next write: ``every_seconds``, or ten times the last commit's time when that is longer,
        so the summary never takes more than a tenth of a busy controller's commits (one second each at 10,000
        devices in the lab)."""
        return max(self.every_seconds, 10 * self.last_commit_seconds)

    def _run(self) -> None:
        while not self._stop.wait(self.next_wait()):
            try:
                self.write_once()
            except Exception:  # noqa: BLE001 - a summary must never stop the listener; said, then tried again
                log.exception("show pnp's summary could not be built")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
