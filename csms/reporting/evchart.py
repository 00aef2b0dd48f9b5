"""EV-ChART CSV exports (modules 2, 3, 4), columns and order as in the Joint Office's
module definitions (reporting.md §1.5): UTF-8 with a byte-order mark, ISO-8601 UTC times."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from csms.common.utc import utc_text
from schemas.port_state import FAILED_STOP_REASONS, MIN_SUCCESS_WH

MODULE_2 = ("station_id", "port_id", "network_provider", "charger_id", "session_id", "connector_id",
            "session_start", "session_end", "session_error", "error_other", "energy_kwh", "power_kw",
            "payment_method", "payment_other")
MODULE_3 = ("station_id", "port_id", "network_provider", "uptime_reporting_start", "uptime_reporting_end",
            "uptime", "total_outage", "total_outage_excl")
MODULE_4 = ("station_id", "port_id", "network_provider", "outage_id", "outage_duration")
MODULE_4_EXCLUSIONS = (*MODULE_4, "excluded_outage", "excluded_outage_reason", "excluded_outage_notes")


# OCPP id-token type → payment method vocabulary (reporting.md §6).
PAYMENT_METHODS = {"ISO14443": "rfid_membership", "ISO15693": "rfid_membership", "Local": "rfid_membership",
                   "Central": "mobile_app", "eMAID": "plug_and_charge", "NoAuthorization": "free",
                   "KeyCode": "other", "MacAddress": "other"}


def evchart_time(moment: datetime | None) -> str:
    """``YYYY-MM-DDTHH:MM:SSZ`` in UTC, the format EV-ChART validates."""
    return "" if moment is None else utc_text(moment)


def decimal2(value: float | None) -> str:
    return "" if value is None else f"{max(value, 0.0):.2f}"


def to_csv(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buffer.getvalue().encode("utf-8-sig")


def quarter_bounds(year: int, quarter: int, time_zone: str = "UTC") -> tuple[datetime, datetime]:
    """The calendar quarter in ``time_zone`` (a station's: months are station-local), as UTC instants."""
    if not 1 <= quarter <= 4:
        raise ValueError("quarter must be 1–4")
    zone = ZoneInfo(time_zone)
    start = datetime(year, 3 * (quarter - 1) + 1, 1, tzinfo=zone)
    end = datetime(year + 1, 1, 1, tzinfo=zone) if quarter == 4 else datetime(year, 3 * quarter + 1, 1, tzinfo=zone)
    return start.astimezone(UTC), end.astimezone(UTC)


def session_error(stop_reason: str | None, energy_kwh: float | None) -> str:
    if stop_reason in FAILED_STOP_REASONS:
        return stop_reason or ""
    if energy_kwh is not None and energy_kwh * 1000 < MIN_SUCCESS_WH:  # reporting.md §5.4
        return "NoEnergyDelivered"
    return ""
