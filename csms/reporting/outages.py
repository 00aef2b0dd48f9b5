"""Outages of a port: from its status, its charge point's connector-0 status and connectivity.

Outage (reporting.md §5.4): a port is out for every minute where (a) its OCPP status, or its
charge point's connector-0 status, is Faulted or Unavailable (OCPI OUTOFORDER/INOPERATIVE), or
(b) the charge point has no live connection for longer than ``offline_grace`` (only the minutes
past the grace count). Overlapping causes count once; each outage keeps its start in the data, so
its id is the same in every window. The formulas that turn outages into uptime:
``csms.reporting.uptime``.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.intervals import Interval, merge

_LATEST = datetime.max.replace(tzinfo=UTC)
DOWN_STATUSES = frozenset({"Faulted", "Unavailable"})

# (time, "connected" | "disconnected"[, connection epoch or None for rows without one])
ConnectivityRow = tuple[datetime, str] | tuple[datetime, str, int | None]


@dataclass(frozen=True, slots=True)
class StatusChange:
    time: datetime
    status: str
    error_code: str = ""


@dataclass(frozen=True, slots=True)
class Outage:
    start: datetime         # inside the window (cut at its start)
    end: datetime           # inside the window (cut at its end, or at now)
    detection: str          # "status" or "offline"
    cause: str = ""         # OCPP status and error code, or "charge point offline"
    true_start: datetime | None = None   # where the outage starts in the data, whatever the window
    scope: str = "port"     # "port", "charge_point" (connector 0) or "connection"
    continues: bool = False  # still out at the end of what was computed

    @property
    def minutes(self) -> float:
        return (self.end - self.start).total_seconds() / 60.0

    @property
    def began(self) -> datetime:
        return self.true_start or self.start

    @property
    def outage_id(self) -> str:
        return outage_id(self.began)


def outage_id(moment: datetime) -> str:
    """An outage's id: its true start in UTC (EV-ChART module 4 ``outage_id`` is a datetime)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{moment.microsecond:06d}Z" if moment.microsecond else f"{text}Z"


@dataclass(frozen=True, slots=True)
class PortTimeline:
    """What is known about one port: its statuses, its charger's connector-0 statuses, connectivity."""

    port_status: Sequence[StatusChange]
    charger_status: Sequence[StatusChange] = ()
    connectivity: Sequence[ConnectivityRow] = ()


def _epoch(row: ConnectivityRow) -> int | None:
    return row[2] if len(row) > 2 else None


def offline_periods(connectivity: Sequence[ConnectivityRow], until: datetime) -> list[Interval]:
    """Periods with no live connection, robust to any interleaving of open and close events.

    The one rule every report uses. Per charge point, events are walked in time order and the
    charger's state is the state of the highest connection epoch seen so far: ``connected(e)``
    with e ≥ current → online; ``disconnected(e)`` with e ≥ current → offline (e > current: a
    newer socket that closed before its "connected" was recorded); an event of an epoch lower
    than the current one is ignored — that socket was replaced by a newer connection (OCPP 1.6
    / 2.0.1 R28 "the newer connection wins") and its late "disconnected" says nothing about
    the live one. Rows without an epoch (recorded before epochs existed) apply in order as
    they come and leave the current epoch as it is. At equal times a "connected" sorts first.
    """
    ordered = sorted(((row[0], row[1] != "connected", _epoch(row), row[1]) for row in connectivity
                      if row[1] in ("connected", "disconnected")),
                     key=lambda r: (r[0], r[1], -1 if r[2] is None else r[2]))
    out: list[Interval] = []
    current: int | None = None
    down_since: datetime | None = None
    for moment, _, epoch, event in ordered:
        if moment >= until:
            break
        if epoch is not None:
            if current is not None and epoch < current:
                continue                      # a replaced connection's event
            current = epoch
        if event == "disconnected" and down_since is None:
            down_since = moment
        elif event == "connected" and down_since is not None:
            out.append((down_since, moment))
            down_since = None
    if down_since is not None and until > down_since:
        out.append((down_since, until))
    return [i for i in out if i[1] > i[0]]


def offline_intervals(connectivity: Sequence[ConnectivityRow], until: datetime,
                      grace: timedelta) -> list[Interval]:
    """Periods without a live connection (:func:`offline_periods`), minus their first ``grace``."""
    return [(start + grace, end) for start, end in offline_periods(connectivity, until) if end - start > grace]


def down_runs(changes: Sequence[StatusChange], until: datetime) -> list[tuple[Interval, StatusChange]]:
    """Maximal runs of consecutive Faulted/Unavailable rows (whatever the error code), each with
    the row that started it. ``changes`` in time order (rows at equal times in arrival order)."""
    ordered = sorted(changes, key=lambda c: c.time)   # stable: equal times keep the caller's order
    runs: list[tuple[Interval, StatusChange]] = []
    first: StatusChange | None = None
    for change in ordered:
        if change.time >= until:
            break
        if change.status in DOWN_STATUSES:
            if first is None:
                first = change
        elif first is not None:
            if change.time > first.time:
                runs.append(((first.time, change.time), first))
            first = None
    if first is not None and until > first.time:
        runs.append(((first.time, until), first))
    return runs


def outages(timeline: PortTimeline, window: Interval, *, offline_grace: timedelta = timedelta(0),
            offline_counts: bool = True) -> list[Outage]:
    """Outages of a port inside ``window``, disjoint. Overlapping causes count once, in the order
    port status, charge-point status (connector 0), connectivity: a later source's outage is
    the part of its period no earlier source covers. Each outage keeps its start in the data
    (``true_start``), which does not depend on where the window cuts it, as long as the
    timeline holds what happened from the start of the outages in force at the window's start
    (``csms.store.report_uptime`` reads that)."""
    until = window[1]
    sources: list[tuple[str, str, list[tuple[Interval, str]]]] = [
        ("status", "port", [(span, _cause(first)) for span, first in down_runs(timeline.port_status, until)]),
        ("status", "charge_point", [(span, _cause(first)) for span, first in down_runs(timeline.charger_status,
                                                                                       until)])]
    if offline_counts:
        sources.append(("offline", "connection", [(span, "charge point offline") for span in
                                                  offline_intervals(timeline.connectivity, until, offline_grace)]))
    found: list[Outage] = []
    covered: list[Interval] = []
    for detection, scope, runs in sources:
        for span, cause in runs:
            for piece in _uncovered(span, covered):
                start, end = max(piece[0], window[0]), min(piece[1], window[1])
                if end > start:
                    found.append(Outage(start, end, detection, cause, piece[0], scope, piece[1] >= until))
        covered = merge([*covered, *(span for span, _ in runs)])
    return sorted(found, key=lambda o: o.start)


def clip_outages(found: Sequence[Outage], window: Interval) -> list[Outage]:
    """``outages(timeline, window)`` from ``found = outages(timeline, span)`` with the same settings,
    for a ``span`` that starts no later and ends no earlier than ``window`` (e.g. EV-ChART module 3's
    three trailing-12-month windows from one pass): runs, their true starts and the sources' order
    do not depend on where the window ends, only the cut does; an outage continues past the window
    when it reaches its end."""
    out = []
    for o in found:
        start, end = max(o.start, window[0]), min(o.end, window[1])
        if end > start:
            out.append(Outage(start, end, o.detection, o.cause, o.true_start, o.scope, o.end >= window[1]))
    return out


def outages_over(timeline: PortTimeline, method: str, span: Interval, *, offline_grace: timedelta = timedelta(0),
                 offline_counts: bool = True) -> list[Outage]:
    """The outages :func:`uptime` finds for ``method`` (UK: offline time counts as reliable), over a
    span to be clipped to each window with :func:`clip_outages`."""
    return outages(timeline, span, offline_grace=offline_grace, offline_counts=offline_counts and method != "uk")


def _uncovered(span: Interval, covered: Sequence[Interval]) -> list[Interval]:
    """``subtract([span], covered)`` for ``covered`` sorted and disjoint (``merge``d), without
    re-sorting it for every span: the cuts ending after the span's start are found by bisection."""
    start, end = span
    if end <= start:
        return []
    out: list[Interval] = []
    cursor = start
    for c_start, c_end in covered[max(0, bisect.bisect_right(covered, (start, _LATEST)) - 1):]:
        if c_end <= cursor:
            continue
        if c_start >= end:
            break
        if c_start > cursor:
            out.append((cursor, c_start))
        cursor = max(cursor, c_end)
        if cursor >= end:
            break
    if cursor < end:
        out.append((cursor, end))
    return out


def _cause(first: StatusChange) -> str:
    return f"{first.status} {first.error_code}".strip()


def lookback_start(timeline: PortTimeline, at: datetime, *, offline_grace: timedelta = timedelta(0)) -> datetime | None:
    """The earliest start of a charge-point-level outage or an offline period in force at ``at``.

    The part of such an outage that counts is what the port's own status does not cover, so
    where it starts depends on the port's statuses since that start: the reader loads them."""
    starts = [span[0] for span, _ in down_runs(timeline.charger_status, datetime.max.replace(tzinfo=UTC))
              if span[0] < at < span[1]]
    starts += [s for s, e in offline_intervals(timeline.connectivity, datetime.max.replace(tzinfo=UTC), offline_grace)
               if s < at < e]
    return min(starts) if starts else None


def known_since(timeline: PortTimeline) -> datetime | None:
    moments = [c.time for c in timeline.port_status] + [c.time for c in timeline.charger_status] + \
        [row[0] for row in timeline.connectivity]
    return min(moments) if moments else None
