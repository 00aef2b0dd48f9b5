"""Prometheus metrics of the ingest side (no per-charger labels)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True, slots=True)
class IngestMetrics:
    rows_written: Counter
    duplicates: Counter
    batch_rows: Histogram
    commit_seconds: Histogram
    write_failures: Counter
    malformed: Counter
    e2e_lag: Histogram
    queue_depth: Gauge
    quality_flags: Counter
    rollup_port_failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> IngestMetrics:
        return cls(
            rows_written=Counter("csms_ingest_rows_written_total", "Rows committed, by table",
                                 ["table"], registry=registry),
            duplicates=Counter("csms_ingest_duplicates_absorbed_total",
                               "Rows that were already stored (redelivery, retries), by table",
                               ["table"], registry=registry),
            batch_rows=Histogram("csms_ingest_batch_rows", "Rows per committed batch",
                                 buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000), registry=registry),
            commit_seconds=Histogram("csms_ingest_commit_seconds", "Time to commit one batch",
                                     buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                                     registry=registry),
            write_failures=Counter("csms_ingest_write_failures_total", "Batches that failed to commit",
                                   registry=registry),
            malformed=Counter("csms_ingest_malformed_messages_total", "Bus messages that could not be decoded",
                              registry=registry),
            e2e_lag=Histogram("csms_ingest_end_to_end_lag_seconds",
                              "Charger message received by the CSMS → row committed",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
                              registry=registry),
            quality_flags=Counter("csms_data_quality_flags_total",
                                  "Stored samples and sessions carrying a data-quality flag, by kind", ["kind"],
                                  registry=registry),
            queue_depth=Gauge("csms_ingest_pending_messages", "Bus messages received but not yet committed",
                              registry=registry),
            rollup_port_failures=Counter("csms_rollup_port_failures_total",
                                         "Ports whose roll-up recompute failed (counted per refresh; each is "
                                         "computed from raw rows meanwhile and retried)", registry=registry),
        )
