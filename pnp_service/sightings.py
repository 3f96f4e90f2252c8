"""Strangers' sightings, written behind their answers.

Owns recording that an undeclared serial called (``/pnp/unclaimed``) without making it wait for the disk: the
stranger's backoff goes out at once, and a background thread (behind.py) writes the sightings through the store, the
same serial's newest one only.  At most ``capacity`` sightings wait; beyond that a sighting is dropped and counted,
and the stranger is recorded at its next poll (two minutes later).  So a flood of strangers costs the listener
neither a thread nor a commit per poll.  A sighting of a serial that was declared in the meantime is not
written.  What is lost on a crash is only what had not been written yet, and its strangers call again.
"""

from __future__ import annotations

import logging
from typing import Callable

from .behind import WriteBehind
from .model import DeviceRecord, Unclaimed
from .stores.base import StatusWrite, Store, StoreError

log = logging.getLogger(__name__)


class SightingWriter:
    def __init__(self, store: Store, capacity: int = 10_000, on_dropped: Callable[[], None] = lambda: None):
        self.store = store
        self._queue: WriteBehind[str, Unclaimed] = WriteBehind(self._write_all, capacity=capacity, latest_only=True,
                                                               on_dropped=on_dropped, name="pnp-sightings")

    def record(self, serial: str, entry: Unclaimed) -> bool:
        """Queue the sighting (replacing an older one of the serial); False when it had to be dropped."""
        return self._queue.put(serial, entry)

    def waiting(self) -> int:
        return self._queue.waiting()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued sighting is written; False if that took longer than ``timeout``."""
        return self._queue.flush(timeout)

    def _write_all(self, batch: dict[str, list[Unclaimed]]) -> None:
        """The batch in one go (one commit on the embedded store): a flood of strangers is written as fast as it
        comes, and the queue, which is memory, stays short."""
        updates = [(serial, _still_a_stranger(serial, entry)) for serial, (entry,) in batch.items()]
        for (serial, _), result in zip(updates, self.store.update_many(updates)):
            if isinstance(result, StoreError):  # it calls again in two minutes, and is recorded then
                log.warning("unclaimed %s not recorded: %s", serial, result)
            elif isinstance(result, Exception):
                log.error("unclaimed %s not recorded: %s: %s", serial, type(result).__name__, result)


def _still_a_stranger(serial: str, entry: Unclaimed) -> Callable[[DeviceRecord], StatusWrite]:
    """The sighting, unless ``serial`` was declared (or matched to a stack) since it called."""

    def decide(record: DeviceRecord) -> StatusWrite:
        unknown = record.declaration is None and record.work is None and record.serial == serial
        return StatusWrite(None, entry if unknown else None)

    return decide
