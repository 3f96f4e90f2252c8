"""One growth rule for every wait after a failure."""

from __future__ import annotations

from pnp_service.backoff import Backoff
from pnp_service.provisioner import Settings
from pnp_service.sudi import Policy


def test_the_delay_doubles_from_its_base_up_to_its_cap():
    backoff = Backoff(30, 900)
    assert [backoff.delay(n) for n in range(0, 8)] == [30, 30, 60, 120, 240, 480, 900, 900]
    assert backoff.delay(10_000) == 900  # no overflow, however long it has failed
    assert Backoff(0.5, 30).after(0.5) == 1.0 and Backoff(0.5, 30).after(20) == 30 and Backoff(1, 30).after(0) == 2


def test_every_growing_wait_of_the_package_follows_it():
    assert [Settings(retry_base_seconds=30, retry_max_seconds=900).retry_delay(n) for n in (1, 2, 3, 6)] == \
        [30, 60, 120, 900]
    policy = Policy(throttle_seconds=15, challenge_seconds=300)
    assert [policy.hold_off_seconds(n) for n in (1, 2, 3, 4, 9)] == [15, 30, 60, 60, 60]  # never past 60 s
