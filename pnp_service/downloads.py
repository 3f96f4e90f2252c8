"""Downloads: signed, expiring URLs (a configuration is fetched only by its device), and image transfer slots.

Owns the URL format ``/pnp/download/KIND/SERIAL/REVISION[/NAME]?expires=T&sig=HMAC``
(an image URL ends in the image's file name: a device names the copy on its flash
after the URL's last segment).  The signature binds kind, serial, work revision,
name and expiry with a secret every
listener of a deployment shares (a file, created on first start), so any of
them can verify a URL another one issued, and a URL stops working when the work
changes or the time is up.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import tempfile
import threading
import time
from typing import Callable
from urllib.parse import quote

from .xmlsafe import decimal

DEFAULT_LIFETIME_SECONDS = 3600


def _read_secret(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except FileNotFoundError:
        return None
    return secret if len(secret) >= 16 else b""


def load_or_create_secret(path: str) -> bytes:
    """Read the shared signing secret, creating it (mode 0600) on first use.

    Listeners that start together agree: the first link wins and the others read it.  A crash leaves no file
    that blocks the next start (the temporary file has a fresh name each time)."""
    existing = _read_secret(path)
    if existing:
        return existing
    secret = secrets.token_hex(32).encode()
    descriptor, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                             dir=os.path.dirname(path) or ".")  # mode 0600 from the start
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secret + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        if existing is None:
            try:
                os.link(temporary, path)
                return secret
            except FileExistsError:
                existing = _read_secret(path)
                if existing:
                    return existing
        os.replace(temporary, path)  # too short to be a secret: a new file, whatever mode the old one had
        return secret
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


class UrlSigner:
    def __init__(self, secret: bytes, lifetime_seconds: int = DEFAULT_LIFETIME_SECONDS):
        if len(secret) < 16:
            raise ValueError("the URL signing secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime_seconds = lifetime_seconds

    def _signature(self, kind: str, serial: str, revision: str, name: str, expires: int, address: str) -> str:
        message = f"{kind}\n{serial}\n{revision}\n{name}\n{expires}\n{address}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    def path(self, kind: str, serial: str, revision: str, name: str, now: float, bound_address: str = "",
             lifetime: int | None = None) -> str:
        """The URL path; with ``bound_address`` it is good only from that address (``bound=1``)."""
        expires = int(now) + min(lifetime or self.lifetime_seconds, self.lifetime_seconds)
        signature = self._signature(kind, serial, revision, name, expires, bound_address)
        tail = f"/{quote(name)}" if name else ""
        bound = "&bound=1" if bound_address else ""
        return (f"/pnp/download/{quote(kind)}/{quote(serial)}/{quote(revision)}{tail}"
                f"?expires={expires}{bound}&sig={signature}")

    def check(self, kind: str, serial: str, revision: str, name: str, expires: str, signature: str, now: float,
              bound_address: str = "") -> str:
        """Empty when the URL is genuine and current (and, when bound, asked for from its address), else why not."""
        expiry = decimal(expires)
        if expiry is None or not signature:
            return "missing or malformed expiry or signature"
        expected = self._signature(kind, serial, revision, name, expiry, bound_address)
        if not hmac.compare_digest(expected, signature):
            return "bad signature"
        if expiry < now:
            return "expired"
        return ""


class TransferGate:
    """At most ``limit`` devices pull an image from this listener process at once; the others are told to wait.

    A device takes a slot when it is sent the request that makes it download
    (:meth:`reserve`, asked by the image-install step before it sends anything:
    a device beyond the limit gets a backoff, never a failure), keeps it while any
    of its transfers runs (:meth:`begin` .. :meth:`end`), and for
    ``hold_seconds`` after a reservation or an incomplete transfer, so that it can
    start, or resume a broken transfer with a Range request, without losing its
    place.  A complete transfer gives the slot back at once.  Per serial:
    the same device asking twice holds one slot.
    """

    def __init__(self, limit: int, hold_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.limit = limit
        self.hold_seconds = hold_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, int] = {}  # serial -> transfers in progress
        self._held: dict[str, float] = {}  # serial -> until when its slot is kept without a transfer

    def _in_use(self, now: float) -> int:
        for serial in [s for s, until in self._held.items() if until <= now and s not in self._running]:
            del self._held[serial]
        return len(self._running.keys() | self._held.keys())

    def _has_slot(self, serial: str, now: float) -> bool:
        return serial in self._running or self._held.get(serial, 0.0) > now

    def reserve(self, serial: str) -> bool:
        """Take (or keep) a slot for ``serial`` before it is sent a download; False: all are in use."""
        with self._lock:
            now = self._clock()
            if not self._has_slot(serial, now) and self._in_use(now) >= self.limit:
                return False
            self._held[serial] = max(self._held.get(serial, 0.0), now + self.hold_seconds)
            return True

    #: Transfers one device may run at once (a resume while its broken connection lingers); one signed URL must
    #: not open a thousand.
    PER_DEVICE = 2

    def begin(self, serial: str) -> bool:
        """A transfer of ``serial`` starts; False when it holds no slot and none is free, or it runs enough."""
        with self._lock:
            now = self._clock()
            if self._running.get(serial, 0) >= self.PER_DEVICE:
                return False
            if not self._has_slot(serial, now) and self._in_use(now) >= self.limit:
                return False
            self._running[serial] = self._running.get(serial, 0) + 1
            return True

    def end(self, serial: str, complete: bool) -> None:
        with self._lock:
            left = self._running.get(serial, 1) - 1
            if left > 0:
                self._running[serial] = left
                return
            self._running.pop(serial, None)
            if complete:
                self._held.pop(serial, None)
            else:
                self._held[serial] = self._clock() + self.hold_seconds

    def in_use(self) -> int:
        with self._lock:
            return self._in_use(self._clock())
