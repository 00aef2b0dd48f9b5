"""``csms_gc_pause_seconds{generation}``: how long each garbage collection stopped the process.

A collection stops the event loop for its whole run: at 10,000 chargers one middle-generation
collection of ~870,000 objects took 715 ms and was the fleet's p99 (issue 15; the thresholds are
in ``csms.cli``). This histogram shows such pauses directly, per role.

The durations are counted by a ``gc.callbacks`` hook, which runs inside whatever allocation
started the collection, on any thread. It therefore takes no lock and calls nothing that could
(prometheus_client's metrics lock per update: a collection started while that lock is held
would deadlock); it only adds to plain integer lists, and the histogram is built from them when
it is scraped.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
GENERATIONS = 3


class GcPauseMetrics(Collector):
    """Counts collections by generation and duration; registered on a role's registry."""

    def __init__(self) -> None:
        self._counts = [[0] * (len(BUCKETS_S) + 1) for _ in range(GENERATIONS)]
        self._sums = [0.0] * GENERATIONS
        self._started = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = min(int(info.get("generation", 0)), GENERATIONS - 1)
        pause = time.perf_counter() - self._started
        self._counts[generation][bisect.bisect_left(BUCKETS_S, pause)] += 1
        self._sums[generation] += pause

    def install(self, registry: CollectorRegistry) -> None:
        registry.register(self)
        gc.callbacks.append(self._on_gc)

    def uninstall(self, registry: CollectorRegistry) -> None:
        """Undo ``install`` (also when it never ran: a role that failed to start)."""
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        with contextlib.suppress(KeyError):
            registry.unregister(self)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily("csms_gc_pause_seconds", "time the process stood still in one garbage "
                                       "collection, by generation", labels=["generation"])
        for generation in range(GENERATIONS):
            counts = self._counts[generation]
            buckets: list[tuple[str, float]] = []
            total = 0
            for bound, count in zip((*BUCKETS_S, float("inf")), counts, strict=True):
                total += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
            family.add_metric([str(generation)], buckets, self._sums[generation])
        yield family
