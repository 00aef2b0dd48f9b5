"""Token buckets per key (source address, charge point id), bounded in memory."""

from __future__ import annotations

import time
from collections import OrderedDict


class TokenBuckets:
    """A token bucket per key (source address, charge point id); bounded in memory (least recently seen
    dropped, which only ever forgives)."""

    def __init__(self, *, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        self._rate = rate_per_s
        self._burst = float(burst)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_keys = max_keys

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self._burst, now))
        # ``now`` may be a little older than ``last`` when it was read before an await.
        return min(self._burst, tokens + max(0.0, now - last) * self._rate)

    def _store(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens, max(now, self._buckets.get(key, (0.0, now))[1]))
        self._buckets.move_to_end(key)
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)

    def has_token(self, key: str, now: float | None = None) -> bool:
        return self._tokens(key, time.monotonic() if now is None else now) >= 1.0

    def take(self, key: str, now: float | None = None) -> bool:
        """Spend a token if there is one; False if not."""
        now = time.monotonic() if now is None else now
        tokens = self._tokens(key, now)
        allowed = tokens >= 1.0
        self._store(key, tokens - 1.0 if allowed else tokens, now)
        return allowed

    def spend(self, key: str, now: float | None = None) -> None:
        """Spend a token even if there is none (a failure happened anyway): the debt is repaid by waiting,
        down to minus one burst at most."""
        now = time.monotonic() if now is None else now
        self._store(key, max(-self._burst, self._tokens(key, now) - 1.0), now)

    def refund(self, key: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._store(key, min(self._burst, self._tokens(key, now) + 1.0), now)

    def retry_after_s(self, key: str, now: float | None = None) -> float:
        """Seconds until the key has a token again."""
        missing = 1.0 - self._tokens(key, time.monotonic() if now is None else now)
        return max(0.0, missing / self._rate) if self._rate > 0 else 3600.0


class SourceRateLimiter(TokenBuckets):
    """Handshakes per source address (kept under its old name)."""

    def allow(self, source: str, now: float | None = None) -> bool:
        return self.take(source, now)
