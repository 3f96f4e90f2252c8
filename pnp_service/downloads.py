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
from urllib.parse import quote

DEFAULT_LIFETIME_SECONDS = 3600


def load_or_create_secret(path: str) -> bytes:
    """Read the shared signing secret, creating it (mode 0600) on first use."""
    try:
        with open(path, "rb") as handle:
            secret = handle.read().strip()
        if len(secret) >= 16:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_hex(32).encode()
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(secret + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)  # a new file, private from the start, whatever mode an old one had
    return secret


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
        if not expires.isdigit() or not signature:
            return "missing or malformed expiry or signature"
        expected = self._signature(kind, serial, revision, name, int(expires), bound_address)
        if not hmac.compare_digest(expected, signature):
            return "bad signature"
        if int(expires) < now:
            return "expired"
        return ""
