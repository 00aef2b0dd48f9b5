"""The OCPP message coverage table (docs/ocpp-coverage.md), generated from the code itself.

For each version: every action a charger sends (``csms.ocpp.directions``), whether the session has a
handler for it, where what it carries is stored and what the CSMS answers; every action the CSMS sends, and
whether an operator can send it through the API (``csms.ocpp.commands.CSMS_ACTIONS``).

"Stored in" and "Answer" are not written by hand: each handler is run on the smallest valid request of the
official schema (required fields only, first enum value), with registry services that accept everything,
and the events it returns name the tables (ingest/writer.py). Where the answer is a registry's decision,
the table says so.

    python -m csms.ocpp.coverage           print the document
    python -m csms.ocpp.coverage --write   write docs/ocpp-coverage.md
    python -m csms.ocpp.coverage --check   exit 1 when docs/ocpp-coverage.md differs

tests/test_ocpp_coverage.py fails when the document differs from what this module generates.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from csms.common.generated import generated_file_main
from csms.ocpp import commands, directions, handlers_v21
from csms.ocpp.context import BootDecision, BootInfo, Context, ProtocolState, Services, TokenDecision
from csms.ocpp.session import HANDLERS
from csms.ocpp.types import OCPP_VERSIONS, ChargePointId, IdToken, OcppVersion
from csms.ocpp.validation import load_schema

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "ocpp-coverage.md"

# Event type → the tables the ingest writer puts it in (ingest/writer.py, ingest/writer_ocpp21.py).
TABLES = {
    "ConnectionEvent": "connection_events, charge_points",
    "StatusEvent": "connector_status",
    "MeterEvent": "meter_samples",
    "TransactionEvent": "transactions, transaction_events",
    "LogEvent": "charger_messages",
    "SettlementEvent": "settlements",
    "DerEvent": "der_events",
    "PeriodicStreamEvent": "periodic_streams",
    "StreamDataEvent": "periodic_stream_samples",
    "BatterySwapEvent": "battery_swaps",
    "PriorityChargingEvent": "priority_charging",
}

# Answers that are a decision of the registry or a service, not fixed by the handler ("2.x": 2.0.1 and 2.1).
DECIDED = {
    ("1.6", "Authorize"): "idTagInfo.status from the id token registry",
    ("2.x", "Authorize"): "idTokenInfo.status from the id token registry",
    ("any", "BootNotification"): "status = the charger's admission (Accepted / Pending / Rejected), interval, "
                                 "currentTime",
    ("1.6", "StartTransaction"): "transactionId (allocated, stable on retry), idTagInfo.status from the id token "
                                 "registry",
    ("1.6", "StopTransaction"): "idTagInfo.status from the id token registry when an idTag is sent",
    ("2.x", "TransactionEvent"): "{}; idTokenInfo.status from the id token registry when an idToken is sent",
    ("any", "SignCertificate"): "status = Accepted when the CSR passes the checks and an operator CA is "
                                "configured, else Rejected; CertificateSigned follows an Accepted",
}

# What a handler stores through its services rather than through bus events (csms/ocpp/handlers_security.py).
SERVICE_STORED = {
    "SignCertificate": "certificate_requests (security services)",
    "SecurityEventNotification": "security_events (security services)",
}


def _decided(version: str, action: str) -> str | None:
    group = "1.6" if version == "1.6" else "2.x"
    return DECIDED.get((group, action)) or DECIDED.get(("any", action))

_PROBE_TIME = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


class _ProbeServices:
    """Registry services that accept everything (the probe only looks at what a handler does)."""

    async def boot(self, charge_point_id: ChargePointId, info: BootInfo) -> BootDecision:
        return BootDecision("Accepted", 300)

    async def authorize(self, charge_point_id: ChargePointId, id_token: IdToken) -> TokenDecision:
        return TokenDecision("Accepted")

    async def allocate_transaction_id(self, charge_point_id: ChargePointId, start_key: str) -> int:
        return 1

    async def transaction_start_key(self, charge_point_id: ChargePointId, transaction_id: int) -> str | None:
        return "probe"

    async def open_transactions(self, charge_point_id: ChargePointId) -> dict[str, tuple[int, int | None]]:
        return {}


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = schema
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def minimal_instance(schema: dict[str, Any], node: dict[str, Any] | None = None) -> Any:
    """The smallest valid instance of a schema: required properties only, first enum value, minItems items."""
    node = _resolve(schema, schema if node is None else node)
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        return {name: minimal_instance(schema, node["properties"][name]) for name in node.get("required", ())}
    if kind == "array":
        return [minimal_instance(schema, node["items"]) for _ in range(node.get("minItems", 0))]
    if kind == "string":
        return "2024-06-01T12:00:00.000Z" if node.get("format") == "date-time" else "x"
    if kind == "integer":
        return int(node.get("minimum", 0))
    if kind == "number":
        return float(node.get("minimum", 0))
    if kind == "boolean":
        return False
    raise ValueError(f"unhandled schema node {node}")


def _answer_text(payload: dict[str, Any]) -> str:
    if not payload:
        return "{}"
    parts = []
    for key, value in payload.items():
        if key == "status" and isinstance(value, str):
            parts.append(f"status = {value}")
        elif isinstance(value, list) and value and isinstance(value[0], dict) and "status" in value[0]:
            parts.append(f"{key}[].status = {value[0]['status']}")
        else:
            parts.append(key)
    return ", ".join(parts)


async def _probe(version: OcppVersion, action: str) -> tuple[str, str]:
    """(stored in, answer) of the handler of ``action``."""
    state = ProtocolState(charge_point_id=ChargePointId("PROBE"), version=version, registration="Accepted")
    ctx = Context(state=state, services=cast(Services, _ProbeServices()), received_at=_PROBE_TIME,
                  message_id="probe")
    payload = minimal_instance(load_schema(version, action, False))
    try:
        reply = await HANDLERS[version][action](ctx, payload)
    except Exception as exc:  # noqa: BLE001 — a handler the probe cannot run is reported, not hidden
        return "?", f"(not probed: {type(exc).__name__})"
    tables = [TABLES.get(type(ev).__name__, type(ev).__name__) for ev in reply.events]
    if action in SERVICE_STORED:
        tables.insert(0, SERVICE_STORED[action])
    stored = ", ".join(dict.fromkeys(tables)) or "—"
    if version == "2.1" and action in handlers_v21.SEND_ACTIONS:
        answer = "none: a SEND is never answered (2.1 Part 4 §4.2.4)"
    else:
        answer = _decided(version, action) or _answer_text(reply.payload)
    return stored, answer


async def _version_section(version: OcppVersion) -> list[str]:
    handlers = HANDLERS[version]
    lines = [f"## OCPP {version}", "", "### Charger → CSMS", "",
             "| Action | Handled | Stored in | Answer |", "|---|---|---|---|"]
    for action in sorted(directions.charger_actions(version)):
        if action in handlers:
            stored, answer = await _probe(version, action)
            lines.append(f"| {action} | yes | {stored} | {answer} |")
        else:
            lines.append(f"| {action} | no | — | NotSupported |")
    offered = commands.CSMS_ACTIONS.get(version, frozenset())
    lines += ["", "### CSMS → charger", "", "| Action | Commanded via the API |", "|---|---|"]
    for action in sorted(directions.csms_actions(version)):
        lines.append(f"| {action} | {'yes' if action in offered else 'no'} |")
    handled = sum(1 for a in directions.charger_actions(version) if a in handlers)
    commanded = sum(1 for a in directions.csms_actions(version) if a in offered)
    lines += ["", f"Charger → CSMS: {handled} of {len(directions.charger_actions(version))} handled. "
                  f"CSMS → charger: {commanded} of {len(directions.csms_actions(version))} offered through "
                  f"`POST /api/v1/charge-points/{{id}}/ocpp/{{Action}}`.", ""]
    return lines


async def render() -> str:
    lines = [
        "# OCPP message coverage",
        "",
        "<!-- Generated by `python -m csms.ocpp.coverage --write` from the handler tables, csms/ocpp/directions.py",
        "     and csms/ocpp/commands.py CSMS_ACTIONS. Do not edit: tests/test_ocpp_coverage.py fails when this",
        "     file differs from what the code says. -->",
        "",
        "Per OCPP version, every action a charging station sends (answered by the session's handler table) and",
        "every action the CSMS sends (offered to operators through the API, each payload validated against the",
        "official schema of the charger's version). *Stored in* names the tables the handler's events are",
        "written to; *Answer* is what the CSMS answers to the smallest valid request (fields of the answer, and",
        "the status where it is fixed), or who decides it. A charger action without a handler, or a CSMS action",
        "sent by a charger, is answered CALLERROR NotSupported; an action the version does not know,",
        "NotImplemented (2.0.1/2.1 Part 4 §4.3; 1.6J §4.2.3).",
        "",
    ]
    for version in OCPP_VERSIONS:
        lines += await _version_section(version)
    return "\n".join(lines).rstrip("\n") + "\n"


def generate() -> str:
    return asyncio.run(render())


def main(argv: list[str] | None = None) -> int:
    return generated_file_main(argv, prog="python -m csms.ocpp.coverage",
                               description=__doc__.split("\n\n")[0] if __doc__ else None, target=DOC_PATH,
                               generate=generate)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
