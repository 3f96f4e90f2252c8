"""The one rule for waiting after a failure: a delay that doubles with each one, from a base up to a cap.

Used for a step's retries (provisioner), a hand-off's retries (handoff), a SUDI hold-off (sudi) and the Clixon
store's reconnects and commits.  Pure and tiny on purpose: every growing wait in the package reads the same.
"""

from __future__ import annotations

import dataclasses

#: Doubling stops here: 2**30 times any base is beyond every cap in use, and the number stays small.
_MAX_DOUBLINGS = 30


@dataclasses.dataclass(frozen=True)
class Backoff:
    base: float
    cap: float

    def delay(self, failures: int) -> float:
        """The wait after the ``failures``-th failure in a row: base, 2·base, 4·base ... never over the cap."""
        return min(self.cap, self.base * 2 ** min(max(failures, 1) - 1, _MAX_DOUBLINGS))

    def after(self, previous: float) -> float:
        """The wait that follows a wait of ``previous`` (for loops that keep the last wait, not a count)."""
        return min(self.cap, max(previous, self.base) * 2)
