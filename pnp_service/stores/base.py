"""The store interface shared by the embedded file and the Clixon controller."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, TypeVar

from ..model import DeviceRecord, Status, Unclaimed


class StoreError(RuntimeError):
    """The store cannot be used as configured; the message says what to fix."""


class StoreUnavailable(StoreError):
    """The store cannot take a write right now (controller down or busy, file unreadable)."""


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Every declared device and every unclaimed one, for the status table."""

    devices: tuple[DeviceRecord, ...]
    unclaimed: tuple[Unclaimed, ...]
    problems: tuple[str, ...] = ()


class Change(Protocol):
    status: Status | None
    unclaimed: Unclaimed | None


D = TypeVar("D", bound=Change)


class Store(Protocol):
    def load(self, serial: str) -> DeviceRecord:
        """What is known about ``serial`` (empty record for an unknown one)."""

    def update(self, serial: str, decide: Callable[[DeviceRecord], D]) -> D:
        """Load the record, let ``decide`` return a change, and make it durable before returning.

        ``decide`` runs with the record locked, so two polls of one device at
        once cannot both act on the same status.
        """

    def reload(self, serial: str) -> None:
        """Make sure the record of ``serial`` is current (stores that cache: one round trip)."""

    def snapshot(self) -> Snapshot:
        """Everything, for ``pnp-service status``."""

    def close(self) -> None:
        """Flush and release what the store holds."""
