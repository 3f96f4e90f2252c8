"""Stores: where declarations, work and status live.

Owns the one contract the listener and the command line use (``base.Store``) and
its two implementations: the embedded declarations file with its SQLite state
(``embedded``) and the Clixon controller (``clixon``).
"""

from .base import Change, Snapshot, Store, StoreError, StoreUnavailable, UnknownSerial

__all__ = ["Change", "Snapshot", "Store", "StoreError", "StoreUnavailable", "UnknownSerial"]
