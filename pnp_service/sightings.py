"""Strangers' sightings, written behind their answers.

Owns recording that an undeclared serial called (``/pnp/unclaimed``) without making it wait for the disk: the
stranger's backoff goes out at once, and a background thread writes the sightings through the store, the same
serial's newest one only.  At most ``capacity`` sightings wait; beyond that a sighting is dropped and counted, and
the stranger is recorded at its next poll (two minutes later).  So a flood of strangers costs the listener
neither a thread nor a commit per poll.  A sighting of a serial that was declared in the meantime is not
written.  What is lost on a crash is only what had not been written yet, and its strangers call again.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .model import DeviceRecord, Unclaimed
from .stores.base import StatusWrite, Store, StoreError

log = logging.getLogger(__name__)


class SightingWriter:
    def __init__(self, store: Store, capacity: int = 10_000, on_dropped: Callable[[], None] = lambda: None):
        self.store = store
        self.capacity = capacity
        self.on_dropped = on_dropped
        self._waiting: dict[str, Unclaimed] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def record(self, serial: str, entry: Unclaimed) -> bool:
        """Queue the sighting (replacing an older one of the serial); False when it had to be dropped."""
        with self._lock:
            if serial not in self._waiting and len(self._waiting) >= self.capacity:
                dropped = True
            else:
                dropped = False
                self._waiting[serial] = entry
                self._idle.clear()
            if self._thread is None:  # started in the process that serves (after gunicorn's fork)
                self._thread = threading.Thread(target=self._run, name="pnp-sightings", daemon=True)
                self._thread.start()
        if dropped:
            self.on_dropped()
            return False
        self._wake.set()
        return True

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued sighting is written; False if that took longer than ``timeout``."""
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._waiting:
                        self._idle.set()
                        break
                    serial = next(iter(self._waiting))
                    entry = self._waiting.pop(serial)
                self._write(serial, entry)

    def _write(self, serial: str, entry: Unclaimed) -> None:
        def still_a_stranger(record: DeviceRecord) -> StatusWrite:
            unknown = record.declaration is None and record.work is None and record.serial == serial
            return StatusWrite(None, entry if unknown else None)

        try:
            self.store.update(serial, still_a_stranger)
        except StoreError as exc:  # it calls again in two minutes, and is recorded then
            log.warning("unclaimed %s not recorded: %s", serial, exc)
        except Exception:  # noqa: BLE001 - the writer must survive any one sighting
            log.exception("unclaimed %s not recorded", serial)
