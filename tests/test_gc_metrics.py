"""The garbage-collection pause histogram: counted by generation, cumulative buckets, removable."""

from __future__ import annotations

import gc

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from csms.run.gc_metrics import BUCKETS_S, GcPauseMetrics


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            out[(s.name, s.labels.get("generation", ""), s.labels.get("le", ""))] = s.value
    return out


def test_collections_are_counted_by_generation_in_cumulative_buckets() -> None:
    registry = CollectorRegistry()
    metrics = GcPauseMetrics()
    metrics.install(registry)
    try:
        gc.collect(2)
        gc.collect(2)
        gc.collect(0)
        got = _samples(registry)
    finally:
        metrics.uninstall(registry)
    assert got[("csms_gc_pause_seconds_count", "2", "")] >= 2
    assert got[("csms_gc_pause_seconds_count", "0", "")] >= 1
    assert got[("csms_gc_pause_seconds_sum", "2", "")] > 0
    for generation in ("0", "1", "2"):
        bounds = [repr(b) for b in BUCKETS_S] + ["+Inf"]
        counts = [got[("csms_gc_pause_seconds_bucket", generation, le)] for le in bounds]
        assert counts == sorted(counts)  # cumulative
        assert counts[-1] == got[("csms_gc_pause_seconds_count", generation, "")]


def test_uninstall_stops_counting_and_unregisters() -> None:
    registry = CollectorRegistry()
    metrics = GcPauseMetrics()
    metrics.install(registry)
    metrics.uninstall(registry)
    assert metrics._on_gc not in gc.callbacks
    gc.collect(2)
    assert "csms_gc_pause_seconds" not in generate_latest(registry).decode()
    assert sum(metrics._counts[2]) == 0
