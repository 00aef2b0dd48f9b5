"""Reconnect back-off and connection pacing (pure; the caller sleeps)."""

from __future__ import annotations

import random


class Backoff:
    """Jittered exponential back-off in the shape of OCPP 2.0.1's RetryBackOff* variables.

    The n-th consecutive failure waits ``min(maximum, minimum × 2^n)`` plus a random
    ``0 … random_range`` (RetryBackOffWaitMinimum / RetryBackOffRepeatTimes /
    RetryBackOffRandomRange, 2.0.1 Part 2 B10 and OCPP-J Part 4 §5.3): the random part keeps a
    fleet that lost its connection at the same moment from coming back at the same moment.
    """

    def __init__(self, *, minimum_s: float, maximum_s: float, random_range_s: float, rng: random.Random) -> None:
        self.minimum_s = minimum_s
        self.maximum_s = maximum_s
        self.random_range_s = random_range_s
        self._rng = rng
        self.failures = 0

    def bounds(self, failures: int) -> tuple[float, float]:
        base = min(self.maximum_s, self.minimum_s * 2.0 ** min(failures, 30))
        return base, base + self.random_range_s

    def next_delay_s(self) -> float:
        """The wait after one more failure."""
        base, _ = self.bounds(self.failures)
        self.failures += 1
        return base + self._rng.uniform(0.0, self.random_range_s)

    def reset(self) -> None:
        self.failures = 0


class Pacer:
    """Spread connection attempts evenly: at most ``rate_per_s`` starts per second.

    ``reserve(now)`` returns how long the caller must wait for its slot; slots are handed
    out in call order, so a burst of callers is admitted one interval apart.
    """

    def __init__(self, rate_per_s: float) -> None:
        self._interval_s = 1.0 / rate_per_s
        self._next = float("-inf")

    def reserve(self, now: float) -> float:
        slot = max(now, self._next)
        self._next = slot + self._interval_s
        return slot - now
