"""Prometheus metrics of the central system (low cardinality: no per-charger labels)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import Metric

from csms import __version__
from csms.gateway.loop_metrics import CounterChild, HistogramChild, LoopCounter, LoopHistogram


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    connected: Gauge
    connections_opened: Counter
    connections_closed: Counter
    handshake_failures: Counter
    # Written once or more per message, from the event loop only: the lock-free types (loop_metrics).
    messages: LoopCounter
    handling_seconds: LoopHistogram
    callerrors_sent: Counter
    callerrors_received: Counter
    bus_publish_seconds: LoopHistogram
    commands: Counter
    command_seconds: Histogram
    unsolicited_responses: Counter
    tolerated: Counter
    commands_outstanding: Gauge
    build_info: Info
    # Labelled children of the per-message metrics, looked up once: ``labels()`` validates,
    # locks and hashes on every call (~1.5 µs, twice per message). Bounded: actions and
    # outcomes come from fixed sets (unknown actions share one label).
    _children: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def message_in(self, action: str, outcome: str) -> CounterChild:
        """The ``csms_ocpp_messages_total{direction="in"}`` child of an action and outcome."""
        key = ("in", action, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.messages.labels(action, "in", outcome)
        return child

    def handling(self, action: str) -> HistogramChild:
        """The ``csms_ocpp_handling_seconds`` child of an action."""
        key = ("handling", action)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.handling_seconds.labels(action)
        return child

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        build = Info("csms_build", "Build information", registry=registry)
        build.info({"version": __version__, "role": "serve"})
        return cls(
            connected=Gauge("csms_chargers_connected", "Chargers with a live websocket, by OCPP version",
                            ["ocpp_version"], registry=registry),
            connections_opened=Counter("csms_connections_opened_total", "Websocket connections accepted",
                                       ["ocpp_version"], registry=registry),
            connections_closed=Counter("csms_connections_closed_total", "Websocket connections closed, by reason",
                                       ["reason"], registry=registry),
            handshake_failures=Counter("csms_handshake_failures_total", "Refused websocket handshakes, by cause",
                                       ["cause"], registry=registry),
            messages=LoopCounter("csms_ocpp_messages_total", "OCPP messages, by action, direction and outcome",
                             ["action", "direction", "outcome"], registry=registry),
            handling_seconds=LoopHistogram("csms_ocpp_handling_seconds",
                                       "Time from a CALL received to its answer sent, by action", ["action"],
                                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                0.5, 1, 2.5, 5),
                                       registry=registry),
            callerrors_sent=Counter("csms_ocpp_callerrors_sent_total", "CALLERRORs sent, by error code",
                                    ["code"], registry=registry),
            callerrors_received=Counter("csms_ocpp_callerrors_received_total",
                                        "CALLERRORs received from chargers, by error code (codes their OCPP "
                                        "version does not define count as 'other')", ["code"],
                                        registry=registry),
            bus_publish_seconds=LoopHistogram("csms_bus_publish_seconds", "Time until published events are durable",
                                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                   0.5, 1, 2.5),
                                          registry=registry),
            commands=Counter("csms_commands_total", "CSMS-initiated calls to chargers, by action and outcome",
                             ["action", "outcome"], registry=registry),
            command_seconds=Histogram("csms_command_seconds", "Time from a command sent to its answer",
                                      ["action"], buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                      registry=registry),
            unsolicited_responses=Counter("csms_ocpp_unsolicited_responses_total",
                                          "CALLRESULT/CALLERROR frames matching no pending call (dropped)",
                                          registry=registry),
            tolerated=Counter("csms_ocpp_schema_violations_tolerated_total",
                              "Messages that failed the schema but were accepted in tolerant mode, by action",
                              ["action"], registry=registry),
            commands_outstanding=Gauge("csms_commands_outstanding", "Operator commands sent or queued, not yet "
                                       "answered", registry=registry),
            build_info=build,
        )


class ProcessLabelledRegistry(CollectorRegistry):
    """What a worker process exports: every series of ``inner`` with the labels that tell the workers
    of a host apart (``node``, ``worker``), so that sums over workers and per-worker views need no
    relabelling in the scrape configuration (issue 13 item 9). A label a series has itself wins."""

    def __init__(self, inner: CollectorRegistry, labels: Mapping[str, str]) -> None:
        super().__init__(auto_describe=False)
        self._inner = inner
        self._labels = dict(labels)

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [sample._replace(labels={**self._labels, **sample.labels})
                                for sample in metric.samples]
            yield labelled
