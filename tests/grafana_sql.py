"""Grafana's PostgreSQL query expansion, for running dashboard SQL in tests.

Grafana turns a panel's ``rawSql`` into SQL in two steps, and this module does the same:

1. template variables (frontend): ``$name``, ``${name}``, ``${name:format}`` and ``[[name]]``,
   plus the built-in ``$__interval`` and ``$__interval_ms``. A single-valued variable is
   inserted as is with ``'`` doubled (what Grafana's SQL datasources do), so queries write
   ``'$charge_point'``; ``${name:sqlstring}`` quotes it.
2. macros (backend, grafana-postgresql-datasource ``macros.go``) on ``$__name(args)``:
   ``$__time``, ``$__timeEpoch``, ``$__timeFilter``, ``$__timeFrom``, ``$__timeTo``,
   ``$__timeGroup``, ``$__timeGroupAlias``, ``$__unixEpochFilter``, ``$__unixEpochFrom``,
   ``$__unixEpochTo``, ``$__unixEpochNano{Filter,From,To}``, ``$__unixEpochGroup``,
   ``$__unixEpochGroupAlias``. Times are RFC 3339 UTC literals, as Grafana writes them;
   ``$__timeGroup`` is ``time_bucket`` when the datasource has the TimescaleDB option on (as
   ours does), ``floor(extract(epoch ...))`` otherwise, and like in Grafana a ``$__timeGroup(...)``
   directly followed by ``,`` gets the ``AS "time"`` alias (pre-5.3 compatibility).

Anything Grafana would refuse (an unknown macro or variable, a bad interval) raises ValueError,
so a typo in a dashboard fails the test instead of reaching the database.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

# Grafana's variable syntax (public/app/features/templating/template_srv.ts, variableRegex).
_VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")
# Grafana's macro syntax (sqleng: `\$([_a-zA-Z0-9]+)\(([^\)]*)\)`): arguments cannot contain ")".
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$")
_UNITS = {"ms": timedelta(milliseconds=1), "s": timedelta(seconds=1), "m": timedelta(minutes=1),
          "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1), "y": timedelta(days=365)}


@dataclass(frozen=True, slots=True)
class QueryContext:
    """What Grafana knows when it runs a panel: the time range, the interval and the variables."""

    time_from: datetime
    time_to: datetime
    interval: timedelta = timedelta(minutes=1)
    variables: Mapping[str, str] = field(default_factory=dict)
    timescaledb: bool = True

    @classmethod
    def last(cls, span: timedelta, *, now: datetime | None = None, interval: timedelta = timedelta(minutes=1),
             variables: Mapping[str, str] | None = None) -> QueryContext:
        """The range ``now-<span>`` to ``now``, like a dashboard's time picker."""
        end = now or datetime.now(UTC)
        return cls(end - span, end, interval, dict(variables or {}))


def parse_interval(text: str) -> timedelta:
    """A Grafana interval such as ``30s``, ``5m``, ``1h``, ``1d``, optionally single-quoted."""
    match = _INTERVAL.match(text.strip().strip("'"))
    if match is None:
        raise ValueError(f"not a Grafana interval: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def format_interval(interval: timedelta) -> str:
    """Grafana's gtime.FormatInterval: the largest whole unit, e.g. ``1m``, ``90s`` → ``1m``."""
    ms = int(interval / timedelta(milliseconds=1))
    for unit, size in (("y", 365 * 86_400_000), ("d", 86_400_000), ("h", 3_600_000), ("m", 60_000),
                       ("s", 1000), ("ms", 1)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return "1ms"


def rfc3339(moment: datetime) -> str:
    """Go's time.RFC3339Nano of the UTC time: trailing fractional zeros dropped, ``Z`` suffix."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: Grafana time ranges are absolute")
    utc = moment.astimezone(UTC)
    text = utc.strftime("%Y-%m-%dT%H:%M:%S")
    if utc.microsecond:
        text += "." + f"{utc.microsecond:06d}".rstrip("0")
    return text + "Z"


def _seconds(value: float) -> str:
    """Go's %v of a float64 number of seconds (``3600``, ``0.5``)."""
    return str(int(value)) if value == int(value) else repr(value)


def _nanos(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000


def _format_value(value: str, fmt: str | None) -> str:
    if fmt is None:
        return value.replace("'", "''")
    if fmt == "raw":
        return value
    if fmt in ("sqlstring", "singlequote"):
        return "'" + value.replace("'", "''") + "'"
    if fmt == "doublequote":
        return '"' + value.replace('"', '\\"') + '"'
    raise ValueError(f"variable format {fmt!r} is not supported here")


def replace_variables(sql: str, ctx: QueryContext) -> str:
    """Step 1: template variables and ``$__interval``/``$__interval_ms``; macros are left alone."""
    builtins = {"__interval": format_interval(ctx.interval),
                "__interval_ms": str(int(ctx.interval / timedelta(milliseconds=1)))}

    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2) or match.group(4)
        fmt = match.group(3) or match.group(6)
        if match.group(5):
            raise ValueError(f"variable field paths are not supported: {match.group(0)}")
        if name in builtins:
            return builtins[name]
        if name.startswith("__"):
            return match.group(0)          # a macro ($__timeFilter(...)) or a Grafana-side variable
        if name not in ctx.variables:
            raise ValueError(f"unknown template variable {match.group(0)!r}")
        return _format_value(ctx.variables[name], fmt)

    return _VARIABLE.sub(repl, sql)


def _need(name: str, args: Sequence[str], count: int) -> None:
    if len(args) < count or any(not a for a in args[:count]):
        raise ValueError(f"macro ${name} needs {count} argument(s), got {list(args)}")


def _macro(name: str, args: Sequence[str], ctx: QueryContext) -> str:
    start, end = rfc3339(ctx.time_from), rfc3339(ctx.time_to)
    epoch_from, epoch_to = int(ctx.time_from.timestamp()), int(ctx.time_to.timestamp())
    nano_from, nano_to = _nanos(ctx.time_from), _nanos(ctx.time_to)
    col = args[0] if args else ""
    simple: dict[str, Callable[[], str]] = {
        "__time": lambda: f'{col} AS "time"',
        "__timeEpoch": lambda: f'extract(epoch from {col}) as "time"',
        "__timeFilter": lambda: f"{col} BETWEEN '{start}' AND '{end}'",
        "__unixEpochFilter": lambda: f"{col} >= {epoch_from} AND {col} <= {epoch_to}",
        "__unixEpochNanoFilter": lambda: f"{col} >= {nano_from} AND {col} <= {nano_to}",
    }
    if name in simple:
        _need(name, args, 1)
        return simple[name]()
    if name in ("__timeFrom", "__timeTo"):
        return f"'{start if name == '__timeFrom' else end}'"
    if name in ("__unixEpochFrom", "__unixEpochTo"):
        return str(epoch_from if name == "__unixEpochFrom" else epoch_to)
    if name in ("__unixEpochNanoFrom", "__unixEpochNanoTo"):
        return str(nano_from if name == "__unixEpochNanoFrom" else nano_to)
    if name in ("__timeGroup", "__timeGroupAlias", "__unixEpochGroup", "__unixEpochGroupAlias"):
        _need(name, args, 2)       # a third argument (fill mode) only affects Grafana's post-processing
        seconds = parse_interval(args[1]).total_seconds()
        if name.startswith("__unixEpoch"):
            expr = f"floor(({col})/{_seconds(seconds)})*{_seconds(seconds)}"
        elif ctx.timescaledb:
            expr = f"time_bucket('{seconds:.3f}s',{col})"
        else:
            expr = f"floor(extract(epoch from {col})/{_seconds(seconds)})*{_seconds(seconds)}"
        return expr + (' AS "time"' if name.endswith("Alias") else "")
    raise ValueError(f"unknown macro ${name}")


def expand_macros(sql: str, ctx: QueryContext) -> str:
    """Step 2: Grafana's PostgreSQL macros."""

    def repl(match: re.Match[str]) -> str:
        name = match.group(1)
        # as Grafana does it: look at the character after the first occurrence of the same text
        after = sql.find(match.group(0)) + len(match.group(0))
        if name == "__timeGroup" and sql[after:after + 1] == ",":
            name = "__timeGroupAlias"
        args = [a.strip(" ") for a in match.group(2).split(",")]
        return _macro(name, [] if args == [""] else args, ctx)

    return _MACRO.sub(repl, sql)


def expand(sql: str, ctx: QueryContext) -> str:
    """The SQL Grafana sends to PostgreSQL for ``sql`` in ``ctx``."""
    expanded = expand_macros(replace_variables(sql, ctx), ctx)
    leftover = re.search(r"\$__\w+|\$\{|\[\[", expanded)
    if leftover:
        raise ValueError(f"unexpanded Grafana syntax {leftover.group(0)!r} in: {expanded}")
    return expanded
