"""The Clixon store's write journal: what devices were told, fsynced before they were told, until the controller has it.

Owns the journal file (append-only JSON lines, one change each, the newest per
serial wins on replay), its atomic rewrite after a commit, and the quarantine
file (``JOURNAL.rejected``) where changes the controller refused are kept for the
operator to read.  A torn last line (a crash mid-append) was never acknowledged
and is skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Iterable, Mapping

from ... import model
from ...model import Status, Unclaimed
from ..base import Change

log = logging.getLogger(__name__)


def _line(change: Change) -> str:
    if change.member_of:
        entry: dict = {"kind": "stack-member", "serial": change.serial, "value": {"stack": change.member_of}}
    else:
        kind, record = ("status", change.status) if change.status is not None else ("unclaimed", change.unclaimed)
        assert record is not None
        entry = {"kind": kind, "serial": change.serial, "value": model.record_to_dict(record)}
    return json.dumps(entry, separators=(",", ":"), ensure_ascii=False) + "\n"


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
    raise ValueError(f"unknown kind {entry['kind']!r}")


class Journal:
    """Append-only JSON lines, fsynced.  ``lock`` orders appends against rewrites (see the store)."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.rejected_path = self.path + ".rejected"
        self.lock = threading.Lock()

    def replay(self) -> dict[str, Change]:
        pending: dict[str, Change] = {}
        try:
            with open(self.path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        change = _parse(line)
                    except (ValueError, KeyError, TypeError) as exc:
                        log.warning("journal %s line %d unreadable, skipped: %s", self.path, number, exc)
                        continue
                    pending[change.serial] = change
        except FileNotFoundError:
            pass
        return pending

    def append(self, changes: Iterable[Change]) -> None:
        """Write and fsync; the caller holds :attr:`lock`."""
        data = "".join(_line(change) for change in changes).encode()
        descriptor = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, data)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def rewrite(self, pending: Mapping[str, Change]) -> None:
        """Keep only what is still pending, atomically; the caller holds :attr:`lock`."""
        temporary = self.path + ".tmp"
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.writelines(_line(change) for change in pending.values())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    def quarantine(self, change: Change, reason: str) -> None:
        """Keep a change the controller refused, with the reason, where the operator can read it."""
        entry = json.loads(_line(change))
        entry["reason"] = reason
        descriptor = os.open(self.rejected_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(descriptor, (json.dumps(entry, ensure_ascii=False) + "\n").encode())
        finally:
            os.close(descriptor)
