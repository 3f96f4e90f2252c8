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

    def _signature(self, kind: str, serial: str, revision: str, name: str, expires: int) -> str:
        message = f"{kind}\n{serial}\n{revision}\n{name}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()[:40]

    def path(self, kind: str, serial: str, revision: str, name: str, now: float) -> str:
        expires = int(now) + self.lifetime_seconds
        signature = self._signature(kind, serial, revision, name, expires)
        tail = f"/{quote(name)}" if name else ""
        return f"/pnp/download/{quote(kind)}/{quote(serial)}/{quote(revision)}{tail}?expires={expires}&sig={signature}"

    def check(self, kind: str, serial: str, revision: str, name: str, expires: str, signature: str, now: float) -> str:
        """Empty when the URL is genuine and current, else why it is refused."""
        if not expires.isdigit() or not signature:
            return "missing or malformed expiry or signature"
        expected = self._signature(kind, serial, revision, name, int(expires))
        if not hmac.compare_digest(expected, signature):
            return "bad signature"
        if int(expires) < now:
            return "expired"
        return ""
