"""Day 0 to managed: what happens to a device once it is provisioned, away from every poll.

Owns the hand-off worker: a background thread that takes provisioned devices
whose status says ``handoff pending``, asks an action to hand them on (to the
controller that declared them: ``stores.clixon.handoff``; without one, to hooks:
a command and a webhook, here), and records the outcome in the status through
the store, retried with a growing delay.  A device is claimed with a lease
written to its status before anything is done, so several workers (gunicorn
workers, listeners) never hand one device off twice; each device and revision is
handed off once.  Polls never wait for any of it: the listener only says
"this one is provisioned".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import queue
import shlex
import subprocess
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Protocol

from .backoff import Backoff
from .logs import event
from .model import DeviceRecord, Handoff, Status, format_time
from .stores.base import Store, StoreError
from .xmlsafe import clean_text

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Result:
    """What an action achieved: ``managed``, or not yet (``retry``), or not at all until an operator acts."""

    state: Handoff  # MANAGED or FAILED
    message: str = ""
    device: str = ""
    retry: bool = True

    def __post_init__(self) -> None:
        # The message carries what others wrote (the controller's logmsg, a hook's output, an exception): it
        # goes to the status and the controller, so it is cleaned like anything a device sends.
        object.__setattr__(self, "message", clean_text(self.message, 400))


class Action(Protocol):
    def hand_off(self, record: DeviceRecord) -> Result: ...


def facts(record: DeviceRecord) -> dict[str, Any]:
    """What the hooks get (and the log says): who the device is, where it is, what it runs."""
    status, declaration = record.status, record.declaration
    assert status is not None
    started = status.started
    done = status.handoff.time or status.last_contact
    return {
        "serial": record.serial,
        "hostname": declaration.hostname if declaration else status.facts.hostname,
        "pid": (declaration.pid if declaration else "") or status.facts.platform,
        "udi": status.facts.udi,
        "address": status.address,
        "version": status.facts.version,
        "revision": status.revision,
        "host_key": status.facts.host_key,
        "members": [list(m) for m in status.facts.members],
        "provisioned": format_time(status.last_contact),
        "seconds": int((done - started).total_seconds()) if started and done else None,
    }


class HookAction:
    """Without a controller: run ``command`` with the facts as JSON on stdin, and POST them to ``webhook``."""

    def __init__(self, command: str = "", webhook: str = "", timeout: float = 30.0):
        self.command, self.webhook, self.timeout = command, webhook, timeout

    def hand_off(self, record: DeviceRecord) -> Result:
        data = json.dumps(facts(record), ensure_ascii=False).encode()
        status = record.status
        done = {hook for hook in (status.handoff.device if status else "").split(",") if hook}  # hooks that already ran
        ran = []
        if self.command and "command" not in done:
            try:
                result = subprocess.run(shlex.split(self.command), input=data, capture_output=True, timeout=self.timeout)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return Result(Handoff.FAILED, f"--on-provisioned did not run: {exc}", ",".join(sorted(done)))
            if result.returncode != 0:
                tail = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
                return Result(Handoff.FAILED, f"--on-provisioned exited {result.returncode}: {tail[0][:200]}",
                              ",".join(sorted(done)))
            ran.append("command")
        if self.webhook and "webhook" not in done:
            request = urllib.request.Request(self.webhook, data=data, headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
            except (urllib.error.URLError, OSError) as exc:
                return Result(Handoff.FAILED, f"--webhook {self.webhook}: {exc}", ",".join(sorted(done | set(ran))))
            ran.append("webhook")
        return Result(Handoff.MANAGED, f"hooks ran ({', '.join(ran) or 'none left'})", ",".join(sorted(done | set(ran))))


class HandoffWorker:
    """Hands provisioned devices on in a background thread; see the module docstring."""

    def __init__(self, store: Store, action: Action, *, sweep_seconds: float = 60.0, lease_seconds: int = 300,
                 retry_base_seconds: int = 30, retry_max_seconds: int = 3600, clock: Callable[[], float] = time.time,
                 note: Callable[[str, str, str], object] = lambda serial, what, detail: None):
        self.store, self.action = store, action
        #: Told each outcome for the device's timeline: ``note(serial, "handoff-managed", message)``.
        self.note = note
        self.sweep_seconds, self.lease_seconds = sweep_seconds, lease_seconds
        self.retry_base_seconds, self.retry_max_seconds = retry_base_seconds, retry_max_seconds
        self.clock = clock
        self._queue: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def notify(self, serial: str) -> None:
        """The listener's word that ``serial`` is provisioned and waits to be handed on."""
        self._queue.put(serial)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="pnp-handoff", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._queue.put("")
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        last_sweep = 0.0
        while not self._stop.is_set():
            try:
                serial = self._queue.get(timeout=max(1.0, self.sweep_seconds / 4))
            except queue.Empty:
                serial = ""
            if self._stop.is_set():
                break
            try:
                if serial:
                    self.run(serial)
                if self.clock() - last_sweep >= self.sweep_seconds:
                    last_sweep = self.clock()
                    self.sweep()
            except Exception:  # noqa: BLE001 - the worker must survive any one device
                log.exception("hand-off worker: unexpected error; going on")

    def sweep(self) -> int:
        """Hand on every device that is due (after a restart, or a retry whose time has come)."""
        now = self._now()
        due = [r.serial for r in self.store.snapshot().devices
               if r.status is not None and r.status.handoff.state in (Handoff.PENDING, Handoff.FAILED)
               and r.status.handoff.next is not None and r.status.handoff.next <= now]
        return sum(self.run(serial) for serial in due)  # run() checks again, under the device's lock

    def _now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(int(self.clock()), dt.timezone.utc)

    def run(self, serial: str) -> bool:
        """Claim ``serial`` if it is due, hand it on, record the outcome; True when something was done."""
        now = self._now()
        lease = now + dt.timedelta(seconds=self.lease_seconds)

        def claim(record: DeviceRecord) -> Status | None:
            status = record.status
            due = (status is not None and status.handoff.state in (Handoff.PENDING, Handoff.FAILED) and status.handoff.next is not None
                   and status.handoff.next <= now and status.handoff.revision == status.revision)
            return dataclasses.replace(status, handoff=status.handoff.claimed(lease)) if due and status is not None else None

        try:
            claimed = self.store.write_status(serial, claim)
        except StoreError as exc:
            log.warning("hand-off of %s not claimed: %s", serial, exc)
            return False
        if claimed is None:
            return False
        record = self.store.load(serial)
        try:
            result = self.action.hand_off(record)
        except Exception as exc:  # noqa: BLE001 - a failing action is a failed hand-off, retried
            result = Result(Handoff.FAILED, f"{type(exc).__name__}: {exc}")
        self._record(serial, claimed.revision, result)
        return True

    def _record(self, serial: str, revision: str, result: Result) -> None:
        now = self._now()

        def decide(record: DeviceRecord) -> Status | None:
            status = record.status
            if status is None or status.revision != revision:
                return None  # the work changed meanwhile
            delay = Backoff(self.retry_base_seconds, self.retry_max_seconds).delay(status.handoff.attempts + 1)
            retry = result.state != Handoff.MANAGED and result.retry
            retry_at = now + dt.timedelta(seconds=delay) if retry else None
            return dataclasses.replace(status, handoff=status.handoff.recorded(result.state, result.message,
                                                                                 result.device, now, retry_at))

        self.store.write_status(serial, decide)
        level = logging.INFO if result.state == Handoff.MANAGED else logging.WARNING
        event(log, level, f"handoff-{result.state}", serial=serial, device=result.device or None,
              detail=result.message, retry="yes" if result.retry and result.state != Handoff.MANAGED else "no")
        self.note(serial, f"handoff-{result.state}", result.message)
