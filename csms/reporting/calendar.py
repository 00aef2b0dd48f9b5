"""Report buckets in a station's time zone: boundaries as UTC instants, DST-correct.

A boundary is where the local hour, day, ISO week or month changes. Walking quarter hours
finds them exactly: every zone offset in use is a multiple of 15 minutes. A local day is 23
or 25 hours long on a DST change; the repeated hour of a fall-back is two hour buckets.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from schemas.intervals import Interval
from schemas.port_state import BUCKET, ceil_bucket

WIDTHS = ("none", "hour", "day", "week", "month")
HOUR = timedelta(hours=1)
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


def _local_day_start(day: date, zone: ZoneInfo) -> datetime:
    """The first quarter hour (UTC) whose local date is ``day`` — as the quarter-hour walk finds
    it; local midnight, or the transition instant when a DST gap skips midnight."""
    moment = ceil_bucket(datetime.combine(day, time(0), zone).astimezone(UTC))
    for _ in range(16):   # at most a few hours of gap or overlap, in quarter hours
        if (moment - BUCKET).astimezone(zone).date() >= day:
            moment -= BUCKET
        elif moment.astimezone(zone).date() < day:
            moment += BUCKET
        else:
            break
    return moment


def _next_start(day: date, width: str) -> date:
    if width == "day":
        return day + timedelta(days=1)
    if width == "week":
        return day + timedelta(days=7 - day.weekday())          # the next Monday (ISO week)
    return date(day.year + 1, 1, 1) if day.month == 12 else date(day.year, day.month + 1, 1)


def report_bounds(window: Interval, width: str, zone: ZoneInfo) -> list[datetime]:
    """[window start, every bucket start inside the window, window end]."""
    if width not in WIDTHS:
        raise ValueError(f"bucket must be one of {', '.join(WIDTHS)}")
    bounds = [window[0]]
    if width == "hour":
        moment = ceil_bucket(window[0])
        if moment == window[0]:
            moment += BUCKET
        while moment < window[1]:
            local = moment.astimezone(zone)
            if local.minute == 0:
                bounds.append(moment)
                if len(bounds) > MAX_BUCKETS:
                    raise ValueError(f"more than {MAX_BUCKETS} buckets: use a wider bucket or a shorter window")
                # With the same UTC offset an hour later, the next local hour starts exactly then (no
                # zone changes its offset twice within an hour), so the quarter hours between are skipped.
                ahead = moment + HOUR
                if ahead < window[1] and ahead.astimezone(zone).utcoffset() == local.utcoffset():
                    moment = ahead
                    continue
            moment += BUCKET
    elif width != "none":
        # Days, weeks and months jump from one local day start to the next (the same instants
        # as walking quarter hours, without walking them).
        day = _next_start(window[0].astimezone(zone).date(), width)
        while (moment := _local_day_start(day, zone)) < window[1]:
            if moment > window[0]:
                bounds.append(moment)
                if len(bounds) > MAX_BUCKETS:
                    raise ValueError(f"more than {MAX_BUCKETS} buckets: use a wider bucket or a shorter window")
            day = _next_start(day, width)
    bounds.append(window[1])
    return bounds


def walked_bounds(window: Interval, width: str, zone: ZoneInfo) -> list[datetime]:
    """The definition: walk every quarter hour and keep those where the local period changes
    (tests compare :func:`report_bounds` with it)."""
    bounds = [window[0]]
    moment = ceil_bucket(window[0])
    if moment == window[0]:
        moment += BUCKET
    while moment < window[1]:
        if width != "none" and _starts_bucket(moment, moment - BUCKET, width, zone):
            bounds.append(moment)
        moment += BUCKET
    return [*bounds, window[1]]


def hour_of_week(moment: datetime, zone: ZoneInfo) -> tuple[int, int]:
    """(ISO weekday 1 = Monday … 7, local hour 0–23)."""
    local = moment.astimezone(zone)
    return local.isoweekday(), local.hour


# Report windows from the API's parameters. Every reporting date lies in these years: outside
# them nothing is stored that a report could be about, and the local-time arithmetic of
# windows near year 1 or 9999 would overflow (issue 11 item 8: a 4xx, never a 500).
FIRST_YEAR, LAST_YEAR = 2000, 2100
EARLIEST = datetime(FIRST_YEAR, 1, 1, tzinfo=UTC)
LATEST = datetime(LAST_YEAR + 1, 1, 1, tzinfo=UTC)
MAX_WINDOW = timedelta(days=400)
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
_DATE = re.compile(r"^(\d{4})-(\d{2})-(\d{2})$")
_YEAR = re.compile(r"^\d{4}$")


class WindowError(ValueError):
    """A report window the API refuses (answered 400 with this message)."""


def _year(year: int, name: str, text: str) -> int:
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise WindowError(f"{name}={text}: the year must be between {FIRST_YEAR} and {LAST_YEAR}")
    return year


def parse_month(text: str, name: str = "month") -> tuple[int, int]:
    """``YYYY-MM`` → (year, month), within the reporting years."""
    match = _MONTH.match(text)
    if match is None or not 1 <= int(match[2]) <= 12:
        raise WindowError(f"{name}={text!r}: expected YYYY-MM with a month 01–12")
    return _year(int(match[1]), name, text), int(match[2])


def parse_date(text: str, name: str = "local_date") -> date:
    match = _DATE.match(text)
    if match is None:
        raise WindowError(f"{name}={text!r}: expected YYYY-MM-DD")
    try:
        day = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError as exc:
        raise WindowError(f"{name}={text!r}: {exc}") from exc
    _year(day.year, name, text)
    return day


def parse_year(text: str, name: str = "year") -> int:
    if not _YEAR.match(text):
        raise WindowError(f"{name}={text!r}: expected YYYY")
    return _year(int(text), name, text)


def check_instant(moment: datetime, name: str) -> datetime:
    """An explicit window bound: with a UTC offset, inside the reporting years; as UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise WindowError(f"{name} needs a UTC offset (e.g. 2026-03-01T00:00:00Z)")
    if not EARLIEST <= moment <= LATEST:
        raise WindowError(f"{name}={moment.isoformat()}: must lie between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
    return moment.astimezone(UTC)


def local_window(zone: ZoneInfo, *, local_date: str | None = None, month: str | None = None,
                 year: str | None = None) -> tuple[Interval, str]:
    """A station-local day, month or calendar year as UTC instants (DST-correct), and its label."""
    if local_date is not None:
        day = parse_date(local_date)
        return (datetime.combine(day, time(0), zone).astimezone(UTC),
                datetime.combine(day + timedelta(days=1), time(0), zone).astimezone(UTC)), f"local_date={local_date}"
    if month is not None:
        y, m = parse_month(month)
        following = (y + 1, 1) if m == 12 else (y, m + 1)
        return (datetime(y, m, 1, tzinfo=zone).astimezone(UTC),
                datetime(*following, 1, tzinfo=zone).astimezone(UTC)), f"month={month}"
    assert year is not None
    y = parse_year(year)
    return (datetime(y, 1, 1, tzinfo=zone).astimezone(UTC), datetime(y + 1, 1, 1, tzinfo=zone).astimezone(UTC)), \
        f"year={year}"


def requested_window(zone: ZoneInfo, *, start: datetime | None = None, end: datetime | None = None,
                     local_date: str | None = None, month: str | None = None,
                     year: str | None = None) -> tuple[Interval, str]:
    """The window a caller asked for: ``from``/``to`` (instants), or a station-local
    ``local_date``, ``month`` or ``year`` — exactly one way. Raises :class:`WindowError`."""
    local = [name for name, value in (("local_date", local_date), ("month", month), ("year", year))
             if value is not None]
    explicit = start is not None or end is not None
    if len(local) + explicit != 1:
        raise WindowError("give the window one way: from and to, or local_date=YYYY-MM-DD, month=YYYY-MM or "
                          "year=YYYY (in the station's time zone)")
    if local:
        return local_window(zone, local_date=local_date, month=month, year=year)
    if start is None or end is None:
        raise WindowError("from and to go together")
    window = (check_instant(start, "from"), check_instant(end, "to"))
    if not timedelta(0) < window[1] - window[0] <= MAX_WINDOW:
        raise WindowError(f"the window must be positive and at most {MAX_WINDOW.days} days")
    return window, "from/to"
