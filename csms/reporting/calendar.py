"""Report buckets in a station's time zone: boundaries as UTC instants, DST-correct.

A boundary is where the local hour, day, ISO week or month changes. Walking quarter hours
finds them exactly: every zone offset in use is a multiple of 15 minutes. A local day is 23
or 25 hours long on a DST change; the repeated hour of a fall-back is two hour buckets.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from schemas.intervals import Interval
from schemas.port_state import BUCKET, ceil_bucket

WIDTHS = ("none", "hour", "day", "week", "month")
MAX_BUCKETS = 10_000


def _starts_bucket(moment: datetime, previous: datetime, width: str, zone: ZoneInfo) -> bool:
    here, before = moment.astimezone(zone), previous.astimezone(zone)
    if width == "hour":
        return here.minute == 0
    if here.date() == before.date():
        return False
    if width == "day":
        return True
    if width == "week":
        return here.isocalendar()[:2] != before.isocalendar()[:2]
    return (here.year, here.month) != (before.year, before.month)


def report_bounds(window: Interval, width: str, zone: ZoneInfo) -> list[datetime]:
    """[window start, every bucket start inside the window, window end]."""
    if width not in WIDTHS:
        raise ValueError(f"bucket must be one of {', '.join(WIDTHS)}")
    bounds = [window[0]]
    if width != "none":
        moment = ceil_bucket(window[0])
        if moment == window[0]:
            moment += BUCKET
        while moment < window[1]:
            if _starts_bucket(moment, moment - BUCKET, width, zone):
                bounds.append(moment)
                if len(bounds) > MAX_BUCKETS:
                    raise ValueError(f"more than {MAX_BUCKETS} buckets: use a wider bucket or a shorter window")
            moment += BUCKET
    bounds.append(window[1])
    return bounds


def hour_of_week(moment: datetime, zone: ZoneInfo) -> tuple[int, int]:
    """(ISO weekday 1 = Monday … 7, local hour 0–23)."""
    local = moment.astimezone(zone)
    return local.isoweekday(), local.hour
