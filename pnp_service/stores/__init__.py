"""Stores: where declarations, work and status live.

Owns the one small interface the listener uses (:class:`Store`) and its
implementations: the embedded XML file (default) and the Clixon controller.
"""

from .base import Snapshot, Store, StoreError, StoreUnavailable

__all__ = ["Snapshot", "Store", "StoreError", "StoreUnavailable"]
