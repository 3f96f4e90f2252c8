"""The Clixon store's write journal: what devices were told, fsynced before they were told, until the controller has it.

Owns the journal file (append-only JSON lines, one change each, the newest per
serial wins on replay), its atomic rewrite after a commit, and the quarantine
file (``JOURNAL.rejected``) where changes the controller refused are kept for the
operator to read.  A torn last line (a crash mid-append) was never acknowledged
and is skipped.

Several processes may share one journal (gunicorn workers, an HTTP and an HTTPS
listener started in one folder): every line names its owner, a rewrite keeps the
other owners' lines, appends and rewrites take ``JOURNAL.lock`` (flock), and
each owner holds a lock on ``JOURNAL.owners/OWNER`` while it lives, so a process
that starts adopts the lines of owners that died and leaves the living ones alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import tempfile
import threading
from typing import Iterable, Iterator, Mapping

from ... import model
from ...model import Status, Unclaimed
from ..base import Change

log = logging.getLogger(__name__)


def _line(change: Change, owner: str = "") -> str:
    if change.member_of:
        entry: dict = {"kind": "stack-member", "serial": change.serial, "value": {"stack": change.member_of}}
    elif change.forget:
        entry = {"kind": "forget-unclaimed", "serial": change.serial, "value": {}}
    else:
        kind, record = ("status", change.status) if change.status is not None else ("unclaimed", change.unclaimed)
        assert record is not None
        entry = {"kind": kind, "serial": change.serial, "value": model.record_to_dict(record)}
    if owner:
        entry["owner"] = owner
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"


_OWNER_KEY = '"owner":"'


def _owner_of(line: str) -> str:
    """The owner a line names ("" for an older version's line, or one that cannot be read).  Read from the line's end
    without parsing it: ``_line`` writes the owner last, and a quote inside a value is escaped, so the last
    ``"owner":"`` is the key's; a rewrite looks at every line of a journal that may hold tens of thousands."""
    start = line.rfind(_OWNER_KEY)
    if start >= 0 and line.endswith('"}\n'):
        owner = line[start + len(_OWNER_KEY):-3]
        if owner and '"' not in owner and "\\" not in owner:
            return owner
    try:
        owner = json.loads(line).get("owner", "")
    except (ValueError, AttributeError):
        return ""
    return owner if isinstance(owner, str) else ""


def _parse(line: str) -> Change:
    entry = json.loads(line)
    serial, value = entry["serial"], entry["value"]
    if not isinstance(serial, str) or not isinstance(value, dict):
        raise ValueError("not a journal entry")
    if entry["kind"] == "status":
        return Change(serial, status=model.record_from_dict(Status, value))
    if entry["kind"] == "unclaimed":
        return Change(serial, unclaimed=model.record_from_dict(Unclaimed, value))
    if entry["kind"] == "stack-member" and isinstance(value.get("stack"), str):
        return Change(serial, member_of=value["stack"])
    if entry["kind"] == "forget-unclaimed":
        return Change(serial, forget=True)
    raise ValueError(f"unknown kind {entry['kind']!r}")


class Journal:
    """Append-only JSON lines, fsynced.  ``lock`` orders this process's appends against its rewrites (see the
    store); ``JOURNAL.lock`` orders them against other processes'."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.rejected_path = self.path + ".rejected"
        self.lock = threading.Lock()
        self._owners = self.path + ".owners"
        self.owner = ""  # taken at the first replay or append: a read-only store never becomes one
        self._liveness: int | None = None

    # ------------------------------------------------------------------ owners

    def _become_owner(self) -> None:
        if self.owner:
            return
        os.makedirs(self._owners, mode=0o700, exist_ok=True)
        owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        descriptor = os.open(os.path.join(self._owners, owner), os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)  # held while this process lives; the kernel drops it at its death
        self.owner, self._liveness = owner, descriptor

    def _alive(self, owner: str) -> bool:
        if not owner or "/" in owner or owner.startswith("."):
            return False
        if owner == self.owner:
            return True
        try:
            descriptor = os.open(os.path.join(self._owners, owner), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(descriptor)
        return False

    def close(self) -> None:
        """Stop being an owner: what is left in the journal is adopted by the next process that starts."""
        if self._liveness is not None:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(self._owners, self.owner))
            os.close(self._liveness)
            self._liveness = None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        descriptor = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)

    def _lines(self) -> list[str]:
        return list(self._read())

    def _read(self) -> Iterator[str]:
        """The journal's lines, read as they are used (a rewrite never holds the whole file)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                yield from (line if line.endswith("\n") else line + "\n" for line in handle if line.strip())
        except FileNotFoundError:
            return

    # ------------------------------------------------------------------ the journal

    def replay(self) -> dict[str, Change]:
        """What this process takes over: its own lines and those of owners that died (an older version's too)."""
        self._become_owner()
        pending: dict[str, Change] = {}
        with self._exclusive():
            lines = self._lines()
            for number, line in enumerate(lines, 1):
                if self._alive(_owner_of(line)):
                    continue  # a living listener's: it commits them
                try:
                    change = _parse(line)
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("journal %s line %d unreadable, skipped: %s", self.path, number, exc)
                    continue
                pending[change.serial] = change
            self._write(lines, pending)
            for owner in os.listdir(self._owners):
                if not self._alive(owner):
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(self._owners, owner))
        return pending

    def append(self, changes: Iterable[Change]) -> None:
        """Write and fsync; the caller holds :attr:`lock`."""
        self._become_owner()
        data = "".join(_line(change, self.owner) for change in changes).encode()
        with self._exclusive():
            descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(descriptor, data)
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    def rewrite(self, pending: Mapping[str, Change]) -> None:
        """Keep only what is still pending here, and every other living owner's lines, atomically; the caller holds
        :attr:`lock`."""
        self._become_owner()
        with self._exclusive():
            self._write(self._read(), pending)

    def _write(self, lines: Iterable[str], pending: Mapping[str, Change]) -> None:
        """Replace the journal with the living other owners' ``lines`` and ``pending``, written as they are read."""
        if not pending and not os.path.exists(self.path):
            return
        alive: dict[str, bool] = {}  # one look per owner, not per line

        def kept(owner: str) -> bool:
            if owner not in alive:
                alive[owner] = owner != self.owner and self._alive(owner)
            return alive[owner]

        folder = os.path.dirname(self.path)
        descriptor, temporary = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.writelines(line for line in lines if kept(_owner_of(line)))
                handle.writelines(_line(change, self.owner) for change in pending.values())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)

    def quarantine(self, change: Change, reason: str) -> None:
        """Keep a change the controller refused, with the reason, where the operator can read it."""
        entry = json.loads(_line(change))
        entry["reason"] = reason
        descriptor = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, (json.dumps(entry, ensure_ascii=False) + "\n").encode())
        finally:
            os.close(descriptor)
