"""The lock-free per-message metrics expose exactly what prometheus-client's own types would."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from csms.gateway.loop_metrics import LoopCounter, LoopHistogram

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
# Bounds themselves (an observation equal to a bound counts in that bucket: "le"), between them,
# zero, beyond the last bound, a negative duration from a clock step.
AMOUNTS = (0.0, 0.0005, 0.0007, 0.001, 0.003, 0.01, 0.099, 0.1, 0.25, 4.9, 5.0, 5.0001, 77.0, -0.001)


def _exposition(registry: CollectorRegistry) -> list[str]:
    # The library's own types also export *_created series; the loop types do not (nothing reads them here).
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def _pair() -> tuple[CollectorRegistry, CollectorRegistry]:
    return CollectorRegistry(), CollectorRegistry()


def test_histogram_with_labels_matches_the_library() -> None:
    lib, loop = _pair()
    ref = Histogram("csms_ocpp_handling_seconds", "Time", ["action"], buckets=BUCKETS, registry=lib)
    ours = LoopHistogram("csms_ocpp_handling_seconds", "Time", ["action"], buckets=BUCKETS, registry=loop)
    for i, amount in enumerate(AMOUNTS):
        action = ("MeterValues", "Heartbeat")[i % 2]
        ref.labels(action).observe(amount)
        ours.labels(action).observe(amount)
    assert _exposition(loop) == _exposition(lib)
    assert loop.get_sample_value("csms_ocpp_handling_seconds_bucket",
                                 {"action": "MeterValues", "le": "0.001"}) == 2.0  # 0.0 and 0.0007 (even indices)
    assert loop.get_sample_value("csms_ocpp_handling_seconds_count", {"action": "Heartbeat"}) == len(AMOUNTS) // 2


def test_histogram_without_labels_matches_the_library() -> None:
    lib, loop = _pair()
    ref = Histogram("csms_bus_publish_seconds", "Durable", buckets=BUCKETS[:-1], registry=lib)
    ours = LoopHistogram("csms_bus_publish_seconds", "Durable", buckets=BUCKETS[:-1], registry=loop)
    assert _exposition(loop) == _exposition(lib)  # before any observation: zero buckets, as the library's
    for amount in AMOUNTS:
        ref.observe(amount)
        ours.observe(amount)
    assert _exposition(loop) == _exposition(lib)
    assert loop.get_sample_value("csms_bus_publish_seconds_sum") == pytest.approx(math.fsum(AMOUNTS))


def test_counter_matches_the_library() -> None:
    lib, loop = _pair()
    ref = Counter("csms_ocpp_messages_total", "Messages", ["action", "direction", "outcome"], registry=lib)
    ours = LoopCounter("csms_ocpp_messages_total", "Messages", ["action", "direction", "outcome"], registry=loop)
    for labels, n in ((("MeterValues", "in", "ok"), 3), (("-", "in", "rejected"), 1), (("Heartbeat", "in", "ok"), 2)):
        for _ in range(n):
            ref.labels(*labels).inc()
            ours.labels(*labels).inc()
    ref.labels("MeterValues", "in", "ok").inc(2.5)
    ours.labels("MeterValues", "in", "ok").inc(2.5)
    assert _exposition(loop) == _exposition(lib)
    assert loop.get_sample_value("csms_ocpp_messages_total",
                                 {"action": "MeterValues", "direction": "in", "outcome": "ok"}) == 5.5


def test_misuse_is_refused_as_the_library_refuses_it() -> None:
    registry = CollectorRegistry()
    counter = LoopCounter("c_total", "C", ["a"], registry=registry)
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError, match="label values"):
        counter.labels("x", "y")
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopCounter("c_total", "again", ["a"], registry=registry)  # the registry's own duplicate check
    Histogram("h", "H", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        LoopHistogram("h", "H", buckets=BUCKETS, registry=registry)
