"""Opening hours (OCPI 2.2.1 ``Hours``) as UTC intervals, DST-correct."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from schemas.intervals import Interval, clip, merge, subtract


def _hhmm(value: str) -> time:
    hours, minutes = value.split(":")
    h, m = int(hours), int(minutes)
    return time(0, 0) if h == 24 else time(h, m)


def local_day_bounds(day: date, zone: ZoneInfo) -> Interval:
    start = datetime.combine(day, time(0), zone).astimezone(UTC)
    end = datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)
    return start, end


def opening_intervals(hours: dict[str, Any] | None, time_zone: str, window: Interval) -> list[Interval]:
    """The station's access hours inside ``window``; ``None`` or twentyfourseven means all of it.

    ``regular_hours`` entries are ``{"weekday": 1..7 (Monday = 1), "period_begin": "HH:MM",
    "period_end": "HH:MM"}`` in station-local time; a period ending at or before its begin runs
    past midnight. Exceptional openings and closings are applied on top.
    """
    if not hours or hours.get("twentyfourseven"):
        return [window]
    zone = ZoneInfo(time_zone)
    first = window[0].astimezone(zone).date() - timedelta(days=1)
    last = window[1].astimezone(zone).date()
    spans: list[Interval] = []
    day = first
    while day <= last:
        for period in hours.get("regular_hours") or []:
            if int(period["weekday"]) != day.isoweekday():
                continue
            begin = datetime.combine(day, _hhmm(period["period_begin"]), zone)
            end_day = day if _hhmm(period["period_end"]) > _hhmm(period["period_begin"]) else day + timedelta(days=1)
            end = datetime.combine(end_day, _hhmm(period["period_end"]), zone)
            spans.append((begin.astimezone(UTC), end.astimezone(UTC)))
        day += timedelta(days=1)
    for extra in hours.get("exceptional_openings") or []:
        spans.append((_utc(extra["period_begin"]), _utc(extra["period_end"])))
    opened = merge(spans)
    closings = [(_utc(c["period_begin"]), _utc(c["period_end"])) for c in hours.get("exceptional_closings") or []]
    if closings:
        opened = subtract(opened, closings)
    return clip(opened, window)


def _utc(value: str) -> datetime:
    moment = datetime.fromisoformat(value)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
