"""Signed, expiring download URLs: a configuration is fetched only by its device.

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
