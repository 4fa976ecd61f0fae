from __future__ import annotations

import random

from storage.queue import RetryPolicy


def test_backoff_delays_grow_and_are_bounded() -> None:
    policy = RetryPolicy(base_delay_s=10, max_delay_s=60)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 10), (2, 20), (3, 40), (4, 60), (9, 60)]:
        for _ in range(20):
            assert ceiling / 2 <= policy.delay(attempt, rng) <= ceiling
