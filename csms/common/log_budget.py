"""A log budget for events a peer can cause at will."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class BudgetedLog:
    """Events a peer can cause at will (rejected frames, refused handshakes) are logged without
    letting it fill the log: the first ``per_interval`` of each ``interval_s`` at INFO, the rest at
    DEBUG and counted in one INFO line when the interval has passed (or ``flush`` is called).
    Metrics, not logs, count every event."""

    def __init__(self, log: logging.Logger | logging.LoggerAdapter[logging.Logger], what: str, *, summary: str,
                 interval_s: float, per_interval: int, clock: Callable[[], float] = time.monotonic) -> None:
        """``what``: prefix of each event's line; ``summary``: the aggregate line, ``{n}`` the count."""
        self._log = log
        self._what = what
        self._summary = summary
        self._interval_s = interval_s
        self._per_interval = per_interval
        self._clock = clock
        self._window_start: float | None = None
        self._logged = 0
        self._suppressed = 0
        self._last = ""

    def event(self, description: str) -> None:
        now = self._clock()
        if self._window_start is None or now - self._window_start >= self._interval_s:
            self.flush()
            self._window_start = now
            self._logged = 0
        if self._logged < self._per_interval:
            self._logged += 1
            self._log.info("%s: %s", self._what, description)
            return
        self._suppressed += 1
        self._last = description
        self._log.debug("%s: %s", self._what, description)

    def flush(self) -> None:
        if self._suppressed:
            self._log.info("%s in %.0f s (the last: %s)", self._summary.format(n=self._suppressed),
                           self._interval_s, self._last)
            self._suppressed = 0
