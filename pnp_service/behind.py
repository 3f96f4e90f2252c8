"""Writes that go behind the answer: a bounded queue and the one thread that drains it.

Owns the pattern the listener uses for what a device need not wait for (a stranger's sighting, a line of a device's
timeline): ``put`` queues and returns at once; a daemon thread, started in the process that serves (after gunicorn's
fork), hands what waits to ``write`` in batches; at most ``capacity`` entries wait, and beyond that an entry is dropped
and counted (``on_dropped``); ``flush`` waits, with a deadline, until everything queued is written (a graceful stop).
Keyed by a serial: ``latest_only`` keeps one entry per key (the newest), else every entry in order.  ``linger``
seconds after the first entry the batch is taken: many entries, one write (a flush does not linger).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Generic, Hashable, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class WriteBehind(Generic[K, V]):
    def __init__(self, write: Callable[[dict[K, list[V]]], None], *, capacity: int, latest_only: bool = False,
                 on_dropped: Callable[[], None] = lambda: None, name: str = "pnp-behind", linger: float = 0.0):
        self.write = write
        self.linger = linger
        self._urgent = threading.Event()
        self.capacity = capacity
        self.latest_only = latest_only
        self.on_dropped = on_dropped
        self.name = name
        self._waiting: dict[K, list[V]] = {}
        self._count = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None

    def put(self, key: K, value: V) -> bool:
        """Queue ``value`` under ``key``; False when it had to be dropped (the queue is full)."""
        with self._lock:
            entries = self._waiting.get(key)
            if self.latest_only and entries:
                entries[0] = value  # the newest replaces what waits: it takes no more room
                kept = True
            elif self._count >= self.capacity:
                kept = False
            else:
                self._waiting.setdefault(key, []).append(value)
                self._count += 1
                kept = True
            if kept:
                self._idle.clear()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        if not kept:
            self.on_dropped()
            return False
        self._wake.set()
        return True

    def waiting(self) -> int:
        with self._lock:
            return self._count

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued is written; False if that took longer than ``timeout``."""
        self._urgent.set()
        self._wake.set()
        return self._idle.wait(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            if self.linger and not self._urgent.is_set():
                self._urgent.wait(self.linger)
            self._wake.clear()
            while True:
                with self._lock:
                    if not self._waiting:
                        self._idle.set()
                        break
                    batch, self._waiting, self._count = self._waiting, {}, 0
                try:
                    self.write(batch)
                except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                    log.exception("%s: %d entries not written", self.name, sum(len(v) for v in batch.values()))
