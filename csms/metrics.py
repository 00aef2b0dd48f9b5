"""Prometheus metrics of the central system (low cardinality: no per-charger labels)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from csms import __version__
from csms.ocpp.errors import canonical_code

# The CALLERROR codes each OCPP version defines, canonical spelling (csms.ocpp.errors): 1.6J §4.2.3
# Table 7 (spelled FormationViolation / OccurenceConstraintViolation there, both accepted on
# receipt), 2.0.1 Part 4 §4.3 Table 8, 2.1 Part 4 §4.3 Table 9 (the same 12 codes as 2.0.1).
_CODES_201 = frozenset({
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported", "NotImplemented", "NotSupported",
    "OccurrenceConstraintViolation", "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError",
    "SecurityError", "TypeConstraintViolation"})
SPEC_ERROR_CODES: dict[str, frozenset[str]] = {
    "1.6": _CODES_201 - {"MessageTypeNotSupported", "RpcFrameworkError"},
    "2.0.1": _CODES_201,
    "2.1": _CODES_201,
}
OTHER_ERROR_CODE = "other"


def received_error_code_label(version: str, code: str) -> str:
    """The label value for an error code a charger sent: its canonical name if the version defines
    it, else one fixed value, so that chargers can never mint label values (README, Observability)."""
    canonical = canonical_code(code)
    return canonical if canonical in SPEC_ERROR_CODES.get(version, _CODES_201) else OTHER_ERROR_CODE


@dataclass(frozen=True, slots=True)
class GatewayMetrics:
    connected: Gauge
    connections_opened: Counter
    connections_closed: Counter
    handshake_failures: Counter
    messages: Counter
    handling_seconds: Histogram
    callerrors_sent: Counter
    callerrors_received: Counter
    bus_publish_seconds: Histogram
    commands: Counter
    command_seconds: Histogram
    unsolicited_responses: Counter
    tolerated: Counter
    commands_outstanding: Gauge
    build_info: Info

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
            messages=Counter("csms_ocpp_messages_total", "OCPP messages, by action, direction and outcome",
                             ["action", "direction", "outcome"], registry=registry),
            handling_seconds=Histogram("csms_ocpp_handling_seconds",
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
            bus_publish_seconds=Histogram("csms_bus_publish_seconds", "Time until published events are durable",
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


@dataclass(frozen=True, slots=True)
class BusMetrics:
    """The publishing side of the MQTT bus and its outbox."""

    outbox_events: Gauge
    outbox_bytes: Gauge
    outbox_age: Gauge
    connected: Gauge
    refused: Counter
    published: Counter
    resent: Counter
    publish_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> BusMetrics:
        return cls(
            outbox_events=Gauge("csms_outbox_pending_events", "Events durable in the outbox, not yet confirmed "
                                "committed by ingest", registry=registry),
            outbox_bytes=Gauge("csms_outbox_pending_bytes", "Bytes of unconfirmed outbox records",
                               registry=registry),
            outbox_age=Gauge("csms_outbox_oldest_age_seconds", "Age of the oldest unconfirmed event",
                             registry=registry),
            connected=Gauge("csms_bus_connected", "1 while the MQTT bus is connected", registry=registry),
            refused=Counter("csms_outbox_refused_total", "Publishes refused because the outbox is full or failed",
                            registry=registry),
            published=Counter("csms_bus_published_batches_total", "Outbox batches published to MQTT "
                              "(including resends)", registry=registry),
            resent=Counter("csms_bus_resends_total", "Times unconfirmed batches were sent again",
                           registry=registry),
            publish_seconds=Histogram("csms_bus_mqtt_publish_seconds", "Time for a window of batches to be "
                                      "acknowledged by the broker",
                                      buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                      registry=registry),
        )


def register_pool_metrics(registry: CollectorRegistry, pool: object, *, role: str) -> None:
    """Database pool usage (size and idle connections) as gauges read at scrape time."""
    size = Gauge("csms_db_pool_connections", "Connections in the database pool", ["role"], registry=registry)
    idle = Gauge("csms_db_pool_idle_connections", "Idle connections in the database pool", ["role"],
                 registry=registry)
    size.labels(role).set_function(lambda: float(getattr(pool, "get_size")()))  # noqa: B009
    idle.labels(role).set_function(lambda: float(getattr(pool, "get_idle_size")()))  # noqa: B009
