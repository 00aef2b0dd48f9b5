"""OCPI 2.2.1 Location, EVSE and Connector objects from registry rows and OCPP statuses (pure).

The mapping rules are documented in ``csms.api.ocpi`` (mod_locations §8.3, §8.4.22; types §16.2).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg

from csms.store import countries
from csms.store.ocpi import StatusKey

CONNECTOR_TYPES = frozenset({
    "CHADEMO", "CHAOJI", *(f"DOMESTIC_{c}" for c in "ABCDEFGHIJKLMNO"), "GBT_AC", "GBT_DC",
    "IEC_60309_2_single_16", "IEC_60309_2_three_16", "IEC_60309_2_three_32", "IEC_60309_2_three_64",
    "IEC_62196_T1", "IEC_62196_T1_COMBO", "IEC_62196_T2", "IEC_62196_T2_COMBO", "IEC_62196_T3A",
    "IEC_62196_T3C", "NEMA_5_20", "NEMA_6_30", "NEMA_6_50", "NEMA_10_30", "NEMA_10_50", "NEMA_14_30",
    "NEMA_14_50", "PANTOGRAPH_BOTTOM_UP", "PANTOGRAPH_TOP_DOWN", "TESLA_R", "TESLA_S",
})

# OCPP 1.6 ChargePointStatus and 2.0.1 ConnectorStatusEnumType -> OCPI Status (reporting reference §3.3).
_OCPP_TO_OCPI = {
    "Available": "AVAILABLE",
    "Preparing": "CHARGING", "Charging": "CHARGING", "SuspendedEV": "CHARGING", "SuspendedEVSE": "CHARGING",
    "Finishing": "CHARGING", "Occupied": "CHARGING",
    "Reserved": "RESERVED",
    "Unavailable": "INOPERATIVE",
    "Faulted": "OUTOFORDER",
}
# "Worst connector status" order, best first (CHARGING wins before this order is used).
_SEVERITY = {"AVAILABLE": 0, "RESERVED": 1, "CHARGING": 2, "BLOCKED": 3, "UNKNOWN": 4, "INOPERATIVE": 5,
             "OUTOFORDER": 6}
_CHARGER_WIDE = ("INOPERATIVE", "OUTOFORDER")


def ocpi_status(ocpp_status: str | None) -> str:
    """OCPI Status for one OCPP connector status; ``None`` (never reported) or anything unknown is UNKNOWN."""
    return _OCPP_TO_OCPI.get(ocpp_status or "", "UNKNOWN")


def evse_status(connector_statuses: Iterable[str | None], *, charger_status: str | None = None,
                live: bool = True) -> str:
    """OCPI ``EVSE.status`` from the OCPP statuses of its connectors.

    Not connected: UNKNOWN. A charger-level (connector 0) Unavailable/Faulted applies to every EVSE.
    Otherwise CHARGING if any connector is in use, else the worst connector status.
    """
    if not live:
        return "UNKNOWN"
    charger = ocpi_status(charger_status)
    if charger in _CHARGER_WIDE:
        return charger
    mapped = [ocpi_status(s) for s in connector_statuses]
    if not mapped:
        return "UNKNOWN"
    if "CHARGING" in mapped:
        return "CHARGING"
    return max(mapped, key=_SEVERITY.__getitem__)


def to_millis(value: datetime) -> datetime:
    """``value`` in UTC, truncated to the millisecond (the precision that is published)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def latest_of(own: datetime, children: Iterable[datetime | None] = ()) -> datetime:
    """``last_updated`` of an object: its own change time or the newest of its children, whichever is later."""
    return to_millis(max([own, *(c for c in children if c is not None)]))


def ocpi_datetime(value: datetime) -> str:
    """OCPI DateTime (types §16.2): UTC with ``Z``, milliseconds only when not zero."""
    value = to_millis(value)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def parse_ocpi_datetime(text: str) -> datetime:
    """An RFC 3339 / OCPI DateTime; no offset means UTC (types §16.2). Cut to milliseconds like ours."""
    return to_millis(datetime.fromisoformat(text.strip()))




def _text(value: str | None, max_len: int) -> str | None:
    return value[:max_len] if value else None


def _connector(row: asyncpg.Record, status_time: datetime | None) -> dict[str, Any] | None:
    if row["standard"] not in CONNECTOR_TYPES:
        return None
    return {"id": str(row["connector_id"]), "standard": row["standard"], "format": row["format"],
            "power_type": row["power_type"], "max_voltage": row["max_voltage_v"],
            "max_amperage": row["max_amperage_a"], "max_electric_power": round(row["rated_power_w"]),
            "last_updated": latest_of(row["connector_updated"], [status_time])}


def _opening_times(stored: str | None) -> dict[str, Any]:
    hours = json.loads(stored) if stored else None
    return hours if isinstance(hours, dict) else {"twentyfourseven": True}


def _location(rows: Sequence[asyncpg.Record], statuses: dict[StatusKey, tuple[str, datetime]],
              live: set[str], country_code: str | None, party_id: str) -> dict[str, Any] | None:
    head = rows[0]
    party_country = country_code or countries.alpha2(head["country"])
    if party_country is None or not countries.is_alpha3(head["country"]):
        return None
    evses: list[dict[str, Any]] = []
    current: tuple[str, int] | None = None
    members: list[asyncpg.Record] = []

    def flush() -> None:
        if current is None:
            return
        cp_id = current[0]
        charger = statuses.get((cp_id, 0, 0))
        connectors: list[dict[str, Any]] = []
        connector_statuses: list[str | None] = []
        for row in members:
            own = statuses.get((cp_id, row["evse_id"], row["connector_id"]))
            obj = _connector(row, own[1] if own else None)
            if obj is not None:
                connectors.append(obj)
                connector_statuses.append(own[0] if own else None)
        if not connectors:
            return
        first = members[0]
        evse: dict[str, Any] = {"uid": first["uid"]}
        if first["emi3_id"]:
            evse["evse_id"] = first["emi3_id"]
        evse["status"] = evse_status(connector_statuses, charger_status=charger[0] if charger else None,
                                     live=cp_id in live)
        evse["connectors"] = connectors
        evse["last_updated"] = latest_of(first["evse_updated"], [*(c["last_updated"] for c in connectors),
                                                                 charger[1] if charger else None])
        evses.append(evse)

    for row in rows:
        if row["evse_id"] is None or row["connector_id"] is None:
            continue
        key = (row["cp_id"], row["evse_id"])
        if key != current:
            flush()
            current, members = key, []
        members.append(row)
    flush()

    location: dict[str, Any] = {"country_code": party_country, "party_id": party_id, "id": head["id"],
                                "publish": head["is_public"]}
    if head["name"]:
        location["name"] = head["name"][:255]
    location["address"] = head["address"][:45]
    location["city"] = head["city"][:45]
    for field, max_len in (("postal_code", 10), ("state", 20)):
        value = _text(head[field], max_len)
        if value is not None:
            location[field] = value
    location["country"] = head["country"]
    location["coordinates"] = {"latitude": f"{head['latitude']:.6f}", "longitude": f"{head['longitude']:.6f}"}
    location["evses"] = evses
    location["time_zone"] = head["time_zone"]
    location["opening_times"] = _opening_times(head["opening_hours"])
    location["last_updated"] = latest_of(head["last_updated"], (e["last_updated"] for e in evses))
    return location



def locations(groups: Sequence[Sequence[asyncpg.Record]], statuses: dict[StatusKey, tuple[str, datetime]], *,
              live: set[str], country_code: str | None, party_id: str) -> list[dict[str, Any]]:
    """OCPI Location objects (``last_updated`` values still as datetimes), in the order of ``groups``."""
    found = (_location(group, statuses, live, country_code, party_id) for group in groups)
    return [location for location in found if location is not None]
