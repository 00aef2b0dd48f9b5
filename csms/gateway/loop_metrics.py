"""Per-message metrics written by the event loop alone, without prometheus-client's locks.

prometheus-client's ``Counter.inc`` takes a ``threading.Lock`` and ``Histogram.observe`` walks
its buckets and takes two (the bucket's and the sum's): three observations and an increment per
MeterValues were 4-6 % of the gateway's CPU under the throughput benchmark's load (issue 15
note, an on-CPU profile). These series are written only from the event loop's thread, so a
plain integer per bucket is enough; they are exposed through prometheus-client's documented
custom-collector interface (``collect`` yields a metric family), with the same names, labels,
buckets and sample names as the library's own types (``_bucket``/``_count``/``_sum``,
``_total``), so dashboards, alerts and scrapes see no difference. A scrape (the HTTP server's
thread or the loop) reads while the loop writes: each integer is read whole (the GIL), and the
buckets are copied before they are summed, so a scrape never sees a bucket's cumulative count
go backwards; ``_sum`` may be one observation ahead of or behind ``_count``, which Prometheus
clients in other languages allow too (the Go client's histograms are lock-free in the same way).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# How prometheus-client writes a bucket's ``le`` (its own histograms' spelling: 0.0005, 1.0, +Inf).
_LE: Callable[[float], str] = floatToGoString


class HistogramChild:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)   # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # The first bound >= amount: Prometheus buckets are "less than or equal" (le).
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class CounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("counters only go up")
        self.value += amount


_Child = TypeVar("_Child", HistogramChild, CounterChild)


class _LoopMetric(Collector, Generic[_Child]):
    """The children by label values (one without labels is made at once), and the registry's parts."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry | None) -> None:
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], _Child] = {}
        if not self._labelnames:
            self._children[()] = self._new_child()
        if registry is not None:
            registry.register(self)

    def _new_child(self) -> _Child:
        raise NotImplementedError

    def labels(self, *values: str) -> _Child:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes {len(self._labelnames)} label values, not {len(values)}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def _family(self) -> Metric:
        raise NotImplementedError


class LoopHistogram(_LoopMetric[HistogramChild]):
    """A histogram (with or without labels) observed from one thread only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: CollectorRegistry | None = None) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._bounds = tuple(bounds)
        self._les = tuple(_LE(b) for b in bounds)
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> HistogramChild:
        return HistogramChild(self._bounds)

    def observe(self, amount: float) -> None:
        """Only for a histogram without labels."""
        self._children[()].observe(amount)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, child in list(self._children.items()):
            counts, total = list(child.counts), child.sum
            cumulative, buckets = 0, []
            for le, n in zip(self._les, counts, strict=True):
                cumulative += n
                buckets.append((le, float(cumulative)))
            family.add_metric(list(key), buckets, total)
        yield family


class LoopCounter(_LoopMetric[CounterChild]):
    """A counter (with or without labels) increased from one thread only."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), *,
                 registry: CollectorRegistry | None = None) -> None:
        # prometheus-client's Counter takes the name with or without "_total"; the family wants it without.
        super().__init__(name.removesuffix("_total"), documentation, labelnames, registry)

    def _new_child(self) -> CounterChild:
        return CounterChild()

    def inc(self, amount: float = 1.0) -> None:
        """Only for a counter without labels."""
        self._children[()].inc(amount)

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for key, child in list(self._children.items()):
            family.add_metric(list(key), child.value)
        yield family
