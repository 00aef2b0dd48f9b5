#!/usr/bin/env python3
"""Generate the provisioned Grafana dashboards in deploy/grafana/dashboards/.

    python deploy/grafana/generate.py          # rewrite every dashboard JSON file
    python deploy/grafana/generate.py --check  # exit 1 if a file differs from what would be written

The JSON files are committed (Grafana reads them from a read-only bind mount) but never
edited by hand: change this script and run it again. The output is deterministic — sorted
keys, panel ids numbered in order, fixed uids — so a change reads as a small diff.

Datasources are the provisioned uids from provisioning/datasources/datasources.yaml:
``timescaledb`` (SQL; Grafana's PostgreSQL macros such as $__timeFilter are expanded by
Grafana) and ``prometheus`` (PromQL; only fixed windows, no Grafana variables, so every
expression can be evaluated as it stands). Panels whose Prometheus expressions can
legitimately return nothing on a healthy system say "May be empty when healthy." in their
description. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Json = dict[str, Any]

DASHBOARDS_DIR = Path(__file__).resolve().parent / "dashboards"

SCHEMA_VERSION = 39
TSDB: Json = {"type": "grafana-postgresql-datasource", "uid": "timescaledb"}
PROM: Json = {"type": "prometheus", "uid": "prometheus"}
MAY_BE_EMPTY = "May be empty when healthy."

# Connector statuses (1.6 ChargePointStatus and 2.0.1 ConnectorStatusEnumType) that mean "a vehicle
# is at the port"; "Charging" is the only one that means energy is flowing (2.0.1 has no such status).
OCCUPIED_STATUSES = ("Occupied", "Charging", "Preparing", "SuspendedEV", "SuspendedEVSE", "Finishing")
DOWN_STATUSES = ("Faulted", "Unavailable")

# Data-quality flag bits, as in schemas/events.py QUALITY_FLAG_NAMES (a test keeps them equal).
QUALITY_FLAGS: dict[int, str] = {
    1 << 0: "register_decreased",
    1 << 1: "outside_transaction",
    1 << 2: "future_timestamp",
    1 << 3: "ancient_timestamp",
    1 << 4: "meter_stop_below_start",
    1 << 5: "implausible_unit",
    1 << 6: "connector_zero_total",
    1 << 7: "schema_tolerated",
    1 << 8: "unparseable_value",
    1 << 9: "unknown_transaction",
}

STATUS_COLORS: dict[str, str] = {
    "Available": "green",
    "Preparing": "yellow",
    "Occupied": "blue",
    "Charging": "blue",
    "SuspendedEV": "light-blue",
    "SuspendedEVSE": "orange",
    "Finishing": "purple",
    "Reserved": "purple",
    "Unavailable": "text",
    "Faulted": "red",
}

DASHBOARD_UIDS = {
    "fleet": "csms-fleet-overview",
    "charger": "csms-charger-detail",
    "utilization": "csms-utilization",
    "operations": "csms-operations",
}


# --------------------------------------------------------------------------- building blocks


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def _sql(text: str) -> str:
    return textwrap.dedent(text).strip()


def sql_target(raw_sql: str, *, fmt: str = "table", ref: str = "A") -> Json:
    assert fmt in ("table", "time_series")
    return {"datasource": TSDB, "editorMode": "code", "format": fmt, "rawQuery": True,
            "rawSql": _sql(raw_sql), "refId": ref}


def prom_target(expr: str, legend: str = "__auto", *, ref: str = "A", instant: bool = False) -> Json:
    target: Json = {"datasource": PROM, "editorMode": "code", "expr": expr, "legendFormat": legend, "refId": ref,
                    "range": not instant, "instant": instant}
    if instant:
        target["format"] = "table"
    return target


def prom_targets(*pairs: tuple[str, str]) -> list[Json]:
    return [prom_target(expr, legend, ref=chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def quantiles(metric: str, by: str = "", qs: Sequence[float] = (0.5, 0.99), legend_prefix: str = "") -> list[Json]:
    """histogram_quantile targets for a histogram (``metric`` without the _bucket suffix)."""
    group = f"le, {by}" if by else "le"
    pairs = []
    for q in qs:
        name = f"p{round(q * 100)}"
        legend = f"{legend_prefix}{name}" + (f" {{{{{by}}}}}" if by else "")
        pairs.append((f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[5m])))", legend))
    return prom_targets(*pairs)


def field_config(*, unit: str | None = None, decimals: int | None = None, min_: float | None = None,
                 max_: float | None = None, thresholds: Sequence[tuple[float | None, str]] | None = None,
                 mappings: list[Json] | None = None, custom: Json | None = None, color: Json | None = None,
                 display_name: str | None = None, overrides: list[Json] | None = None) -> Json:
    defaults: Json = {}
    if unit is not None:
        defaults["unit"] = unit
    if decimals is not None:
        defaults["decimals"] = decimals
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    steps = thresholds if thresholds is not None else [(None, "green")]
    defaults["thresholds"] = {"mode": "absolute",
                              "steps": [{"color": c, "value": v} for v, c in steps]}
    defaults["mappings"] = mappings or []
    defaults["color"] = color or {"mode": "palette-classic"}
    if custom is not None:
        defaults["custom"] = custom
    if display_name is not None:
        defaults["displayName"] = display_name
    return {"defaults": defaults, "overrides": overrides or []}


def status_mappings() -> list[Json]:
    return [{"type": "value", "options": {
        status: {"color": color, "index": i, "text": status} for i, (status, color) in enumerate(STATUS_COLORS.items())
    }}]


def override(field_name: str, *properties: tuple[str, Any]) -> Json:
    return {"matcher": {"id": "byName", "options": field_name},
            "properties": [{"id": key, "value": value} for key, value in properties]}


TIMESERIES_CUSTOM: Json = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                           "spanNulls": False, "axisSoftMin": 0}
BARS_CUSTOM: Json = {"drawStyle": "bars", "lineWidth": 1, "fillOpacity": 80, "showPoints": "never",
                     "spanNulls": False, "axisSoftMin": 0}
LEGEND: Json = {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []}
LEGEND_TABLE: Json = {"displayMode": "table", "placement": "right", "showLegend": True, "calcs": ["mean", "max"]}
TOOLTIP: Json = {"mode": "multi", "sort": "desc"}


def stat_options(*, values: bool = False, color_mode: str = "value", text_mode: str = "auto") -> Json:
    return {"colorMode": color_mode, "graphMode": "none", "justifyMode": "auto", "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": values},
            "textMode": text_mode, "showPercentChange": False, "wideLayout": True}


def table_options(sort_by: str | None = None, desc: bool = True) -> Json:
    options: Json = {"cellHeight": "sm", "showHeader": True,
                     "footer": {"show": False, "countRows": False, "fields": "", "reducer": ["sum"]}}
    if sort_by is not None:
        options["sortBy"] = [{"displayName": sort_by, "desc": desc}]
    return options


def timeseries_options(legend: Json | None = None) -> Json:
    return {"legend": legend or LEGEND, "tooltip": TOOLTIP}


class Layout:
    """Places panels left to right in a 24-column grid, numbering them 1, 2, 3 ... in order."""

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self._x = 0
        self._y = 0
        self._row_height = 0

    def newline(self) -> None:
        if self._x:
            self._y += self._row_height
            self._x = 0
            self._row_height = 0

    def add(self, panel: Json, w: int, h: int) -> None:
        assert 0 < w <= 24
        if self._x + w > 24:
            self.newline()
        panel["gridPos"] = {"h": h, "w": w, "x": self._x, "y": self._y}
        panel["id"] = len(self.panels) + 1
        self._x += w
        self._row_height = max(self._row_height, h)
        self.panels.append(panel)


def panel(kind: str, title: str, description: str, targets: list[Json], *, fields: Json | None = None,
          options: Json | None = None, transformations: list[Json] | None = None) -> Json:
    datasources = {t["datasource"]["uid"] for t in targets}
    assert len(datasources) == 1, f"{title}: one datasource per panel"
    datasource = TSDB if datasources == {"timescaledb"} else PROM
    result: Json = {
        "datasource": datasource,
        "description": " ".join(description.split()),
        "fieldConfig": fields or field_config(),
        "options": options or {},
        "targets": targets,
        "title": title,
        "type": kind,
    }
    if transformations:
        result["transformations"] = transformations
    return result


def dashboard(uid: str, title: str, description: str, panels: list[Json], *, tags: Sequence[str],
              time_from: str, refresh: str, variables: list[Json] | None = None) -> Json:
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [{"asDropdown": False, "icon": "external link", "includeVars": False, "keepTime": True,
                   "tags": ["csms"], "targetBlank": False, "title": "CSMS dashboards", "tooltip": "",
                   "type": "dashboards", "url": ""}],
        "panels": panels,
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["csms", *tags],
        "templating": {"list": variables or []},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# --------------------------------------------------------------------------- shared SQL

LATEST_CONNECTION_CTE = """\
latest_connection AS (
    -- a charger is online when the latest event of its newest connection (highest connection_epoch)
    -- is 'connected': a replaced socket's late 'disconnected' has a lower epoch (schemas/BUS.md)
    SELECT DISTINCT ON (charge_point_id) charge_point_id, event, time
    FROM connection_events
    WHERE event IN ('connected', 'disconnected')
    ORDER BY charge_point_id, connection_epoch DESC NULLS LAST, time DESC, event = 'disconnected' DESC
)"""

# Status intervals per port (evse_id > 0, connector_id > 0) clipped to the dashboard's range:
# the status in force when the range starts (looked up to 30 days back), then every change in
# the range; each lasts until the port's next change (LEAD), the last one until the range end or now.
PORT_INTERVALS_CTE = """\
changes AS (
    SELECT charge_point_id, evse_id, connector_id, $__timeFrom()::timestamptz AS time, status
    FROM (
        SELECT DISTINCT ON (charge_point_id, evse_id, connector_id) charge_point_id, evse_id, connector_id, status
        FROM connector_status
        WHERE evse_id > 0 AND connector_id > 0
          AND time < $__timeFrom() AND time > $__timeFrom()::timestamptz - interval '30 days'
        ORDER BY charge_point_id, evse_id, connector_id, time DESC
    ) AS at_range_start
    UNION ALL
    SELECT charge_point_id, evse_id, connector_id, time, status
    FROM connector_status
    WHERE evse_id > 0 AND connector_id > 0 AND $__timeFilter(time)
),
intervals AS (
    SELECT charge_point_id, evse_id, connector_id, status, time AS t0,
           COALESCE(LEAD(time) OVER (PARTITION BY charge_point_id, evse_id, connector_id ORDER BY time),
                    LEAST(now(), $__timeTo()::timestamptz)) AS t1
    FROM changes
),
spans AS (
    SELECT charge_point_id, evse_id, connector_id, status, extract(epoch FROM t1 - t0)::float8 AS seconds
    FROM intervals
    WHERE t1 > t0
)"""

# The same intervals cut at hour boundaries, for hour-of-week and per-hour views.
PORT_HOURS_CTE = """\
hours AS (
    SELECT i.charge_point_id, i.status, h.hour,
           extract(epoch FROM LEAST(i.t1, h.hour + interval '1 hour') - GREATEST(i.t0, h.hour))::float8 AS seconds
    FROM intervals AS i
    CROSS JOIN LATERAL generate_series(date_trunc('hour', i.t0), i.t1, interval '1 hour') AS h(hour)
    WHERE i.t1 > i.t0
)"""

OCCUPIED_SQL = f"status IN ({_sql_list(OCCUPIED_STATUSES)})"
UP_SQL = f"status NOT IN ({_sql_list(DOWN_STATUSES)})"
DEFINITIONS = (
    f"Definitions (until the reporting API fixes them): a port is a connector with evse_id > 0; occupied = "
    f"status {', '.join(OCCUPIED_STATUSES)}; charging = status Charging (OCPP 2.0.1 reports only Occupied, so "
    f"2.0.1 ports never count as charging here); down = {' or '.join(DOWN_STATUSES)}, up = any other status. "
    f"Each status lasts until the port's next status; time before a port's first known status is not counted."
)


# --------------------------------------------------------------------------- 1. fleet overview


def fleet_overview() -> Json:
    lay = Layout()
    lay.add(panel(
        "stat", "Chargers online / offline",
        "How many registered chargers have a live websocket right now? A charger is online when the latest "
        "connection event (connection_events) of its newest connection (highest connection_epoch) is "
        "'connected'; registered chargers that never connected count as offline.",
        [sql_target(f"""
            WITH {LATEST_CONNECTION_CTE}
            SELECT count(*) FILTER (WHERE lc.event = 'connected') AS "Online",
                   count(*) FILTER (WHERE lc.event IS DISTINCT FROM 'connected') AS "Offline"
            FROM charge_points AS cp
            LEFT JOIN latest_connection AS lc ON lc.charge_point_id = cp.id
        """)],
        fields=field_config(unit="none", decimals=0, color={"mode": "fixed", "fixedColor": "green"},
                            overrides=[override("Offline", ("color", {"mode": "fixed", "fixedColor": "red"}))]),
        options=stat_options(color_mode="value")), 6, 5)
    lay.add(panel(
        "stat", "Websocket connections (gateway)",
        "Chargers connected to the OCPP gateway, by OCPP version, as the central system counts them "
        "(csms_chargers_connected).",
        [prom_target("sum by (ocpp_version) (csms_chargers_connected)", "OCPP {{ocpp_version}}")],
        fields=field_config(unit="none", decimals=0), options=stat_options()), 6, 5)
    lay.add(panel(
        "stat", "Active sessions",
        "Sessions started and not yet stopped (transactions with stopped_at IS NULL). A charger that never "
        "reports the end of a session keeps it open here.",
        [sql_target("""
            SELECT count(*) AS "Active sessions"
            FROM transactions
            WHERE stopped_at IS NULL
        """)],
        fields=field_config(unit="none", decimals=0, color={"mode": "fixed", "fixedColor": "blue"}),
        options=stat_options()), 6, 5)
    lay.add(panel(
        "stat", "Energy delivered today (UTC)",
        "Energy of the sessions that stopped since midnight UTC (transactions.energy_wh = meter stop − meter "
        "start). Sessions still running are not included yet.",
        [sql_target("""
            SELECT COALESCE(sum(energy_wh), 0)::float8 / 1000.0 AS "Energy today"
            FROM transactions
            WHERE stopped_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
              AND energy_wh > 0
        """)],
        fields=field_config(unit="kwatth", decimals=1, color={"mode": "fixed", "fixedColor": "purple"}),
        options=stat_options()), 6, 5)

    lay.add(panel(
        "piechart", "Connector status mix",
        "What is every port doing right now? The latest StatusNotification of each connector (connector_status, "
        "evse_id > 0), counted by status.",
        [sql_target("""
            SELECT status AS "Status", count(*) AS "Ports"
            FROM (
                SELECT DISTINCT ON (charge_point_id, evse_id, connector_id) status
                FROM connector_status
                WHERE evse_id > 0
                ORDER BY charge_point_id, evse_id, connector_id, time DESC
            ) AS latest
            GROUP BY status
            ORDER BY status
        """)],
        fields=field_config(unit="none", decimals=0, mappings=status_mappings()),
        options={"displayLabels": ["name", "value"], "legend": {"displayMode": "table", "placement": "right",
                                                                "showLegend": True, "values": ["value"]},
                 "pieType": "donut", "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
                 "tooltip": {"mode": "single", "sort": "none"}}), 8, 9)
    lay.add(panel(
        "timeseries", "Sessions started per hour",
        "How busy is the fleet? Sessions by the hour they started (transactions.started_at, time_bucket 1 h).",
        [sql_target("""
            SELECT $__timeGroupAlias(started_at, '1h'), count(*) AS "Sessions"
            FROM transactions
            WHERE $__timeFilter(started_at)
            GROUP BY 1
            ORDER BY 1
        """, fmt="time_series")],
        fields=field_config(unit="none", decimals=0, custom=BARS_CUSTOM), options=timeseries_options()), 8, 9)
    lay.add(panel(
        "timeseries", "Energy delivered per day",
        "Energy of completed sessions per UTC day, attributed to the day the session stopped (transactions."
        "energy_wh).",
        [sql_target("""
            SELECT $__timeGroupAlias(stopped_at, '1d'), sum(energy_wh)::float8 / 1000.0 AS "Energy"
            FROM transactions
            WHERE $__timeFilter(stopped_at) AND energy_wh > 0
            GROUP BY 1
            ORDER BY 1
        """, fmt="time_series")],
        fields=field_config(unit="kwatth", decimals=1, custom=BARS_CUSTOM), options=timeseries_options()), 8, 9)

    lay.add(panel(
        "bargauge", "Top faulting chargers",
        "Which chargers fault most? Number of Faulted status notifications per charger in the time range "
        "(connector_status, any connector including 0 = the whole charger), top 10.",
        [sql_target("""
            SELECT charge_point_id AS "Charger", count(*) AS "Faults"
            FROM connector_status
            WHERE $__timeFilter(time) AND status = 'Faulted'
            GROUP BY charge_point_id
            ORDER BY 2 DESC, 1
            LIMIT 10
        """)],
        fields=field_config(unit="none", decimals=0, min_=0, thresholds=[(None, "orange"), (10, "red")]),
        options={"displayMode": "basic", "orientation": "horizontal", "showUnfilled": True, "minVizHeight": 16,
                 "minVizWidth": 8, "maxVizHeight": 300, "namePlacement": "auto", "sizing": "auto",
                 "valueMode": "color",
                 "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True}}), 8, 10)
    lay.add(panel(
        "geomap", "Stations",
        "Where are the stations and are their chargers online? One marker per location with coordinates "
        "(locations.latitude/longitude) that has chargers; size = chargers, text = chargers online.",
        [sql_target(f"""
            WITH {LATEST_CONNECTION_CTE}
            SELECT l.name AS "Location", l.city AS "City", l.latitude AS "latitude", l.longitude AS "longitude",
                   count(*) AS "Chargers",
                   count(*) FILTER (WHERE lc.event = 'connected') AS "Online"
            FROM locations AS l
            JOIN charge_points AS cp ON cp.location_id = l.id
            LEFT JOIN latest_connection AS lc ON lc.charge_point_id = cp.id
            WHERE l.latitude IS NOT NULL AND l.longitude IS NOT NULL
            GROUP BY l.id, l.name, l.city, l.latitude, l.longitude
            ORDER BY l.name
        """)],
        fields=field_config(color={"mode": "fixed", "fixedColor": "green"}),
        options={
            "basemap": {"config": {}, "name": "Basemap", "type": "default"},
            "controls": {"mouseWheelZoom": True, "showAttribution": True, "showZoom": True},
            "layers": [{
                "config": {"showLegend": False, "style": {
                    "color": {"fixed": "green"}, "opacity": 0.6, "rotation": {"fixed": 0, "mode": "mod"},
                    "size": {"field": "Chargers", "fixed": 6, "max": 24, "min": 6},
                    "symbol": {"fixed": "img/icons/marker/circle.svg", "mode": "fixed"},
                    "text": {"field": "Online", "fixed": "", "mode": "field"},
                    "textConfig": {"fontSize": 10, "offsetX": 0, "offsetY": -14, "textAlign": "center",
                                   "textBaseline": "middle"}}},
                "location": {"mode": "coords", "latitude": "latitude", "longitude": "longitude"},
                "name": "Stations", "tooltip": True, "type": "markers"}],
            "tooltip": {"mode": "details"},
            "view": {"allLayers": True, "id": "fit", "lat": 0, "lon": 0, "zoom": 2, "padding": 10},
        }), 16, 10)

    lay.add(panel(
        "table", "Chargers",
        "Every registered charger with its location, model, OCPP version, registration status, whether it is "
        "connected (latest connection event) and when it was last heard from. Click an id for its detail.",
        [sql_target(f"""
            WITH {LATEST_CONNECTION_CTE}
            SELECT cp.id AS "Charger", COALESCE(l.name, '') AS "Location",
                   concat_ws(' ', cp.vendor, cp.model) AS "Model", cp.ocpp_version AS "OCPP",
                   cp.registration_status AS "Registration",
                   CASE WHEN lc.event = 'connected' THEN 'online' ELSE 'offline' END AS "Connection",
                   lc.time AS "Since", cp.last_seen_at AS "Last seen"
            FROM charge_points AS cp
            LEFT JOIN locations AS l ON l.id = cp.location_id
            LEFT JOIN latest_connection AS lc ON lc.charge_point_id = cp.id
            ORDER BY cp.id
        """)],
        fields=field_config(overrides=[
            override("Charger", ("links", [{
                "title": "Charger detail", "targetBlank": False,
                "url": f"/d/{DASHBOARD_UIDS['charger']}/charger-detail?var-charge_point=${{__value.raw}}"
                       "&${__url_time_range}"}])),
            override("Connection", ("mappings", [{"type": "value", "options": {
                "online": {"color": "green", "index": 0}, "offline": {"color": "red", "index": 1}}}]),
                     ("custom.cellOptions", {"type": "color-text"})),
        ]),
        options=table_options()), 24, 10)
    return dashboard(
        DASHBOARD_UIDS["fleet"], "CSMS · Fleet overview",
        "Chargers online, port status, sessions, energy, faults and station map.", lay.panels,
        tags=["fleet"], time_from="now-24h", refresh="1m")


# --------------------------------------------------------------------------- 2. charger detail

CHARGER_VARIABLE: Json = {
    "current": {},
    "datasource": TSDB,
    "definition": "SELECT id FROM charge_points ORDER BY id",
    "description": "The charger shown by every panel",
    "hide": 0,
    "includeAll": False,
    "label": "Charger",
    "multi": False,
    "name": "charge_point",
    "options": [],
    "query": "SELECT id FROM charge_points ORDER BY id",
    "refresh": 1,
    "regex": "",
    "skipUrlSync": False,
    "sort": 0,
    "type": "query",
}

PORT_LABEL = "CASE WHEN evse_id = 0 THEN 'charger' ELSE 'EVSE ' || evse_id || ' / ' || connector_id END"


def _meter_curve(measurand: str, value: str, aggregate: str) -> Json:
    return sql_target(f"""
        SELECT $__timeGroupAlias(time, $__interval),
               'EVSE ' || evse_id || CASE WHEN phase <> '' THEN ' ' || phase ELSE '' END AS metric,
               {aggregate}({value}) AS "value"
        FROM meter_samples
        WHERE $__timeFilter(time) AND charge_point_id = '$charge_point'
          AND measurand = '{measurand}' AND location IN ('', 'Outlet')
        GROUP BY 1, 2
        ORDER BY 1
    """, fmt="time_series")


def charger_detail() -> Json:
    lay = Layout()
    lay.add(panel(
        "table", "Charger",
        "Who is this charger: registry data (charge_points, locations), the last BootNotification and the last "
        "time any message arrived from it.",
        [sql_target("""
            SELECT cp.id AS "Charger", COALESCE(l.name, '') AS "Location", cp.vendor AS "Vendor",
                   cp.model AS "Model", cp.firmware_version AS "Firmware", cp.ocpp_version AS "OCPP",
                   cp.registration_status AS "Registration", cp.security_profile AS "Security profile",
                   cp.last_boot_at AS "Last boot", cp.last_seen_at AS "Last seen"
            FROM charge_points AS cp
            LEFT JOIN locations AS l ON l.id = cp.location_id
            WHERE cp.id = '$charge_point'
        """)],
        options=table_options()), 16, 4)
    lay.add(panel(
        "stat", "In the time range",
        "Sessions that started in the range, their energy (completed sessions only) and the number of Faulted "
        "status notifications.",
        [sql_target("""
            SELECT
                (SELECT count(*) FROM transactions
                 WHERE charge_point_id = '$charge_point' AND $__timeFilter(started_at)) AS "Sessions",
                (SELECT COALESCE(sum(energy_wh), 0)::float8 / 1000.0 FROM transactions
                 WHERE charge_point_id = '$charge_point' AND $__timeFilter(started_at) AND energy_wh > 0) AS "kWh",
                (SELECT count(*) FROM connector_status
                 WHERE charge_point_id = '$charge_point' AND $__timeFilter(time) AND status = 'Faulted') AS "Faults"
        """)],
        fields=field_config(decimals=0, overrides=[override("kWh", ("decimals", 1)),
                                                   override("Faults", ("color", {"mode": "fixed",
                                                                                 "fixedColor": "red"}))]),
        options=stat_options()), 8, 4)

    lay.add(panel(
        "state-timeline", "Port status",
        "What was each port (and the charger as a whole, connector 0) doing when? Status notifications "
        "(connector_status); each status lasts until the next one. The first row of each port is the status it "
        "had when the range starts.",
        [sql_target(f"""
            SELECT time, port, status
            FROM (
                SELECT DISTINCT ON (evse_id, connector_id)
                       $__timeFrom()::timestamptz AS time, {PORT_LABEL} AS port, status, evse_id, connector_id
                FROM connector_status
                WHERE charge_point_id = '$charge_point' AND time < $__timeFrom()
                ORDER BY evse_id, connector_id, connector_status.time DESC
            ) AS at_range_start
            UNION ALL
            SELECT time, {PORT_LABEL} AS port, status
            FROM connector_status
            WHERE charge_point_id = '$charge_point' AND $__timeFilter(time)
            ORDER BY 1, 2
        """)],
        fields=field_config(mappings=status_mappings(), color={"mode": "thresholds"},
                            thresholds=[(None, "text")], display_name="${__field.labels.port}",
                            custom={"fillOpacity": 80, "lineWidth": 0}),
        options={"alignValue": "left", "legend": {"displayMode": "list", "placement": "bottom",
                                                  "showLegend": True},
                 "mergeValues": True, "rowHeight": 0.8, "showValue": "auto", "tooltip": {"mode": "single",
                                                                                         "sort": "none"}},
        transformations=[{"id": "partitionByValues", "options": {"fields": ["port"], "keepFields": False,
                                                                 "naming": {"asLabels": True}}}]), 24, 7)

    lay.add(panel(
        "timeseries", "Power",
        "Active import power per EVSE (and phase, when the charger reports phases): meter_samples "
        "Power.Active.Import, averaged per interval.",
        [_meter_curve("Power.Active.Import", "value", "avg")],
        fields=field_config(unit="watt", custom=TIMESERIES_CUSTOM), options=timeseries_options()), 12, 8)
    lay.add(panel(
        "timeseries", "Energy register",
        "The charger's energy meter per EVSE: meter_samples Energy.Active.Import.Register (highest value per "
        "interval). Its rise during a session is the session's energy.",
        [_meter_curve("Energy.Active.Import.Register", "value / 1000.0", "max")],
        fields=field_config(unit="kwatth", custom=TIMESERIES_CUSTOM), options=timeseries_options()), 12, 8)

    lay.add(panel(
        "table", "Sessions",
        "Sessions that overlap the time range, newest first (transactions): port, token, start, stop, duration, "
        "energy and why it stopped. A session with no stop is still running (or its stop never arrived).",
        [sql_target("""
            SELECT transaction_uid AS "Transaction", evse_id AS "EVSE", connector_id AS "Connector",
                   id_token AS "Token", started_at AS "Started", stopped_at AS "Stopped",
                   round(extract(epoch FROM COALESCE(stopped_at, now()) - started_at) / 60) AS "Minutes",
                   round(energy_wh / 1000.0, 2) AS "kWh", stop_reason AS "Stop reason",
                   quality_flags AS "Quality flags"
            FROM transactions
            WHERE charge_point_id = '$charge_point'
              AND started_at <= $__timeTo()
              AND COALESCE(stopped_at, 'infinity') >= $__timeFrom()
            ORDER BY started_at DESC
            LIMIT 500
        """)],
        options=table_options()), 24, 8)

    lay.add(panel(
        "table", "Errors and fault reports",
        "What went wrong on this charger? Faulted statuses and status notifications carrying an error code "
        "(connector_status: error code, vendor id and vendor error code, info) together with the stored charger "
        "messages that report problems (charger_messages: security events, NotifyEvent, messages accepted "
        "despite schema errors, failed firmware/diagnostics/log uploads), newest first.",
        [sql_target(f"""
            SELECT time AS "Time", {PORT_LABEL} AS "Source", status AS "Kind",
                   concat_ws(' ', NULLIF(error_code, ''), NULLIF(vendor_id, ''), NULLIF(vendor_error_code, ''),
                             NULLIF(info, '')) AS "Detail"
            FROM connector_status
            WHERE charge_point_id = '$charge_point' AND $__timeFilter(time)
              AND (status = 'Faulted' OR error_code NOT IN ('', 'NoError'))
            UNION ALL
            SELECT time, 'message', action, left(payload::text, 500)
            FROM charger_messages
            WHERE charge_point_id = '$charge_point' AND $__timeFilter(time)
              AND (action IN ('SecurityEventNotification', 'NotifyEvent', 'SchemaViolation')
                   OR (action LIKE '%StatusNotification' AND payload->>'status' LIKE '%Fail%'))
            ORDER BY 1 DESC
            LIMIT 500
        """)],
        options=table_options()), 16, 8)
    lay.add(panel(
        "table", "Connections",
        "When did the charger connect, disconnect (and why) and boot, and on which node (connection_events). "
        "Epoch numbers the charger's websockets: a disconnect of an older epoch than the latest connect is a "
        "replaced socket closing late, not an outage.",
        [sql_target("""
            SELECT time AS "Time", event AS "Event", reason AS "Reason", ocpp_version AS "OCPP",
                   node_id AS "Node", connection_epoch AS "Epoch"
            FROM connection_events
            WHERE charge_point_id = '$charge_point' AND $__timeFilter(time)
            ORDER BY time DESC
            LIMIT 500
        """)],
        options=table_options()), 8, 8)
    return dashboard(
        DASHBOARD_UIDS["charger"], "CSMS · Charger detail",
        "One charger: port status timeline, power and energy, sessions, errors and connections.", lay.panels,
        tags=["charger"], time_from="now-24h", refresh="1m", variables=[CHARGER_VARIABLE])


# --------------------------------------------------------------------------- 3. utilization

DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def _hour_of_week_sql(share_condition: str) -> str:
    hour_columns = ",\n".join(f'       max(share) FILTER (WHERE hod = {h}) AS "{h:02d}"' for h in range(24))
    days = ", ".join(f"'{d}'" for d in DAY_NAMES)
    return f"""
WITH {PORT_INTERVALS_CTE},
{PORT_HOURS_CTE},
local_hours AS (
    -- station-local time: the location's IANA time zone, UTC when the charger has no location
    SELECT h.status, h.seconds, h.hour AT TIME ZONE COALESCE(l.time_zone, 'UTC') AS local_hour
    FROM hours AS h
    LEFT JOIN charge_points AS cp ON cp.id = h.charge_point_id
    LEFT JOIN locations AS l ON l.id = cp.location_id
),
slots AS (
    SELECT extract(isodow FROM local_hour)::int AS dow, extract(hour FROM local_hour)::int AS hod,
           COALESCE(sum(seconds) FILTER (WHERE {share_condition}), 0) / NULLIF(sum(seconds), 0) AS share
    FROM local_hours
    GROUP BY 1, 2
)
SELECT (ARRAY[{days}])[dow] AS "Day",
{hour_columns}
FROM slots
GROUP BY dow
ORDER BY dow
"""


def _heat_fields() -> Json:
    return field_config(unit="percentunit", decimals=0, min_=0, max_=1,
                        color={"mode": "continuous-GrYlRd"},
                        custom={"align": "center", "cellOptions": {"type": "color-background", "mode": "basic"}},
                        overrides=[override("Day", ("custom.cellOptions", {"type": "auto"}),
                                            ("custom.width", 60))])


def utilization() -> Json:
    lay = Layout()
    lay.add(panel(
        "stat", "Fleet port time",
        "Share of all ports' observed time (connector_status intervals in the range) that ports were occupied, "
        "charging, and up. " + DEFINITIONS,
        [sql_target(f"""
            WITH {PORT_INTERVALS_CTE}
            SELECT COALESCE(sum(seconds) FILTER (WHERE {OCCUPIED_SQL}), 0) / NULLIF(sum(seconds), 0) AS "Occupied",
                   COALESCE(sum(seconds) FILTER (WHERE status = 'Charging'), 0) / NULLIF(sum(seconds), 0)
                       AS "Charging",
                   COALESCE(sum(seconds) FILTER (WHERE {UP_SQL}), 0) / NULLIF(sum(seconds), 0) AS "Up"
            FROM spans
        """)],
        fields=field_config(unit="percentunit", decimals=1, min_=0, max_=1), options=stat_options()), 16, 5)
    lay.add(panel(
        "stat", "Fleet capacity factor",
        "Energy delivered by sessions that stopped in the range ÷ (rated power × hours in the range). Rated power "
        "of an EVSE is its most powerful connector (connectors.rated_power_w), since an EVSE charges one vehicle "
        "at a time.",
        [sql_target("""
            WITH capacity AS (
                SELECT sum(max_w) AS rated_w
                FROM (SELECT max(rated_power_w) AS max_w FROM connectors GROUP BY charge_point_id, evse_id) AS e
            ),
            energy AS (
                SELECT COALESCE(sum(energy_wh), 0)::float8 AS wh
                FROM transactions
                WHERE $__timeFilter(stopped_at) AND energy_wh > 0
            )
            SELECT energy.wh / NULLIF(capacity.rated_w
                       * extract(epoch FROM $__timeTo()::timestamptz - $__timeFrom()::timestamptz)::float8 / 3600.0,
                   0) AS "Capacity factor"
            FROM capacity, energy
        """)],
        fields=field_config(unit="percentunit", decimals=2, min_=0), options=stat_options()), 8, 5)

    lay.add(panel(
        "table", "Occupancy by hour of week",
        "When are ports in use? For each weekday and hour (station-local time, from the location's time zone), "
        "the share of observed port time that was occupied. " + DEFINITIONS,
        [sql_target(_hour_of_week_sql(OCCUPIED_SQL))],
        fields=_heat_fields(), options=table_options()), 24, 8)
    lay.add(panel(
        "table", "Charging by hour of week",
        "As occupancy by hour of week, but only time in status Charging (energy flowing, OCPP 1.6 ports). "
        + DEFINITIONS,
        [sql_target(_hour_of_week_sql("status = 'Charging'"))],
        fields=_heat_fields(), options=table_options()), 24, 8)

    lay.add(panel(
        "timeseries", "Ports occupied, charging and down",
        "Average number of ports occupied, charging and down (Faulted/Unavailable) in each hour: status time "
        "per hour ÷ 1 h. " + DEFINITIONS,
        [sql_target(f"""
            WITH {PORT_INTERVALS_CTE},
            {PORT_HOURS_CTE}
            SELECT hour AS "time",
                   COALESCE(sum(seconds) FILTER (WHERE {OCCUPIED_SQL}), 0) / 3600.0 AS "Occupied",
                   COALESCE(sum(seconds) FILTER (WHERE status = 'Charging'), 0) / 3600.0 AS "Charging",
                   COALESCE(sum(seconds) FILTER (WHERE NOT {UP_SQL}), 0) / 3600.0 AS "Down"
            FROM hours
            GROUP BY 1
            ORDER BY 1
        """, fmt="time_series")],
        fields=field_config(unit="none", decimals=1, custom=TIMESERIES_CUSTOM,
                            overrides=[override("Down", ("color", {"mode": "fixed", "fixedColor": "red"}))]),
        options=timeseries_options()), 24, 8)

    lay.add(panel(
        "table", "Capacity factor per charger",
        "Per charger: ports (EVSEs), rated power (sum over EVSEs of the most powerful connector), sessions that "
        "stopped in the range and their energy, and capacity factor = energy ÷ (rated power × hours in the "
        "range).",
        [sql_target("""
            WITH capacity AS (
                SELECT charge_point_id, count(*) AS ports, sum(max_w) AS rated_w
                FROM (SELECT charge_point_id, evse_id, max(rated_power_w) AS max_w
                      FROM connectors GROUP BY charge_point_id, evse_id) AS e
                GROUP BY charge_point_id
            ),
            energy AS (
                SELECT charge_point_id, count(*) AS sessions, sum(energy_wh)::float8 AS wh
                FROM transactions
                WHERE $__timeFilter(stopped_at) AND energy_wh > 0
                GROUP BY charge_point_id
            ),
            span AS (
                SELECT extract(epoch FROM $__timeTo()::timestamptz - $__timeFrom()::timestamptz)::float8 / 3600.0
                       AS hours
            )
            SELECT c.charge_point_id AS "Charger", c.ports AS "Ports", c.rated_w / 1000.0 AS "Rated kW",
                   COALESCE(e.sessions, 0) AS "Sessions", COALESCE(e.wh, 0) / 1000.0 AS "kWh",
                   COALESCE(e.wh, 0) / NULLIF(c.rated_w * span.hours, 0) AS "Capacity factor"
            FROM capacity AS c
            CROSS JOIN span
            LEFT JOIN energy AS e ON e.charge_point_id = c.charge_point_id
            ORDER BY 6 DESC NULLS LAST, 1
        """)],
        fields=field_config(overrides=[
            override("kWh", ("decimals", 1)),
            override("Capacity factor", ("unit", "percentunit"), ("decimals", 2),
                     ("custom.cellOptions", {"type": "gauge", "mode": "basic"}), ("max", 1), ("min", 0)),
        ]),
        options=table_options()), 12, 10)
    lay.add(panel(
        "table", "Uptime and use per port",
        "Per port: observed hours and the share of them occupied, charging, Faulted and Unavailable; uptime = "
        "share of observed time not Faulted or Unavailable. Worst uptime first. " + DEFINITIONS,
        [sql_target(f"""
            WITH {PORT_INTERVALS_CTE}
            SELECT charge_point_id AS "Charger", evse_id AS "EVSE", connector_id AS "Connector",
                   sum(seconds) / 3600.0 AS "Observed h",
                   COALESCE(sum(seconds) FILTER (WHERE {OCCUPIED_SQL}), 0) / sum(seconds) AS "Occupied",
                   COALESCE(sum(seconds) FILTER (WHERE status = 'Charging'), 0) / sum(seconds) AS "Charging",
                   COALESCE(sum(seconds) FILTER (WHERE status = 'Faulted'), 0) / sum(seconds) AS "Faulted",
                   COALESCE(sum(seconds) FILTER (WHERE status = 'Unavailable'), 0) / sum(seconds)
                       AS "Unavailable",
                   COALESCE(sum(seconds) FILTER (WHERE {UP_SQL}), 0) / sum(seconds) AS "Uptime"
            FROM spans
            GROUP BY charge_point_id, evse_id, connector_id
            ORDER BY "Uptime", 1, 2, 3
        """)],
        fields=field_config(unit="percentunit", decimals=1, overrides=[
            override("Observed h", ("unit", "none")),
            override("EVSE", ("unit", "none"), ("decimals", 0)),
            override("Connector", ("unit", "none"), ("decimals", 0)),
            override("Uptime", ("custom.cellOptions", {"type": "color-text"}), ("color", {"mode": "thresholds"}),
                     ("thresholds", {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                                                   {"color": "orange", "value": 0.9},
                                                                   {"color": "green", "value": 0.97}]})),
        ]),
        options=table_options()), 12, 10)
    return dashboard(
        DASHBOARD_UIDS["utilization"], "CSMS · Utilization",
        "Occupancy and charging by hour of week, capacity factor and uptime per port. " + DEFINITIONS, lay.panels,
        tags=["utilization"], time_from="now-7d", refresh="5m")


# --------------------------------------------------------------------------- 4. operations


def _rate_panel(title: str, description: str, targets: list[Json], *, unit: str = "reqps", w: int = 8,
                h: int = 8, may_be_empty: bool = False, legend: Json | None = None) -> tuple[Json, int, int]:
    if may_be_empty:
        description = f"{description} {MAY_BE_EMPTY}"
    return (panel("timeseries", title, description, targets,
                  fields=field_config(unit=unit, custom=TIMESERIES_CUSTOM), options=timeseries_options(legend)),
            w, h)


def operations() -> Json:
    lay = Layout()
    stats: list[tuple[str, str, str, str, Json | None]] = [
        ("Chargers connected", "Live websockets on all gateway nodes.", "sum(csms_chargers_connected)", "none",
         None),
        ("Bus connected", "1 when every central-system node's MQTT bus connection is up (min over nodes).",
         "min(csms_bus_connected)", "none",
         {"type": "value", "options": {"0": {"color": "red", "index": 0, "text": "down"},
                                       "1": {"color": "green", "index": 1, "text": "up"}}}),
        ("Outbox pending", "Events durable in the outbox and not yet confirmed committed by ingest.",
         "sum(csms_outbox_pending_events)", "none", None),
        ("Oldest unconfirmed event", "Age of the oldest event in the outbox that ingest has not confirmed.",
         "max(csms_outbox_oldest_age_seconds)", "s", None),
        ("Ingest backlog", "Bus messages the ingest workers received but have not committed yet.",
         "sum(csms_ingest_pending_messages)", "none", None),
        ("Commands outstanding", "Operator commands sent or queued to chargers and not yet answered.",
         "sum(csms_commands_outstanding)", "none", None),
    ]
    for title, description, expr, unit, mapping in stats:
        lay.add(panel("stat", title, description, [prom_target(expr, title)],
                      fields=field_config(unit=unit, decimals=0 if unit == "none" else None,
                                          mappings=[mapping] if mapping else None),
                      options=stat_options()), 4, 4)

    # OCPP gateway
    lay.add(*_rate_panel(
        "OCPP messages by action", "Messages per second by action and direction (csms_ocpp_messages_total).",
        [prom_target("sum by (action, direction) (rate(csms_ocpp_messages_total[5m]))", "{{direction}} {{action}}")],
        legend=LEGEND_TABLE, w=12))
    lay.add(*_rate_panel(
        "OCPP messages by outcome", "Messages per second by outcome: answered, rejected with a CALLERROR, ignored "
        "(csms_ocpp_messages_total).",
        [prom_target("sum by (outcome) (rate(csms_ocpp_messages_total[5m]))", "{{outcome}}")], w=12))
    lay.add(*_rate_panel(
        "Handling latency", "Time from a CALL received to its answer sent, all actions: median and 99th "
        "percentile over 5 minutes (csms_ocpp_handling_seconds).",
        quantiles("csms_ocpp_handling_seconds"), unit="s"))
    lay.add(*_rate_panel(
        "Handling latency p99 by action", "99th percentile of the handling time per action over 5 minutes "
        "(csms_ocpp_handling_seconds).",
        quantiles("csms_ocpp_handling_seconds", by="action", qs=(0.99,)), unit="s", legend=LEGEND_TABLE))
    lay.add(*_rate_panel(
        "CALLERRORs by code", "CALLERRORs per second sent to chargers and received from them, by error code "
        "(csms_ocpp_callerrors_sent_total, csms_ocpp_callerrors_received_total).",
        prom_targets(("sum by (code) (rate(csms_ocpp_callerrors_sent_total[5m]))", "sent {{code}}"),
                     ("sum by (code) (rate(csms_ocpp_callerrors_received_total[5m]))", "received {{code}}")),
        may_be_empty=True))
    lay.add(*_rate_panel(
        "Connections opened", "Websocket connections accepted per second, by OCPP version "
        "(csms_connections_opened_total). Reconnect storms show here.",
        [prom_target("sum by (ocpp_version) (rate(csms_connections_opened_total[5m]))", "OCPP {{ocpp_version}}")]))
    lay.add(*_rate_panel(
        "Connections closed", "Websocket connections closed per second, by reason (csms_connections_closed_total).",
        [prom_target("sum by (reason) (rate(csms_connections_closed_total[5m]))", "{{reason}}")],
        may_be_empty=True))
    lay.add(*_rate_panel(
        "Handshake failures", "Refused websocket handshakes per second, by cause (csms_handshake_failures_total): "
        "unknown id, bad credentials, TLS, rate limit, subprotocol.",
        [prom_target("sum by (cause) (rate(csms_handshake_failures_total[5m]))", "{{cause}}")], may_be_empty=True))
    lay.add(*_rate_panel(
        "Protocol anomalies", "Messages accepted despite schema errors from chargers in tolerant mode, by action "
        "(csms_ocpp_schema_violations_tolerated_total), and CALLRESULT/CALLERROR frames that matched no pending "
        "call (csms_ocpp_unsolicited_responses_total).",
        prom_targets(("sum by (action) (rate(csms_ocpp_schema_violations_tolerated_total[5m]))",
                      "tolerated {{action}}"),
                     ("sum(rate(csms_ocpp_unsolicited_responses_total[5m]))", "unsolicited responses")),
        may_be_empty=True))
    lay.add(*_rate_panel(
        "Operator commands", "Commands sent to chargers per second, by action and outcome (csms_commands_total).",
        [prom_target("sum by (action, outcome) (rate(csms_commands_total[5m]))", "{{action}} {{outcome}}")],
        may_be_empty=True))
    lay.add(*_rate_panel(
        "Operator command latency", "99th percentile of the time from a command sent to its answer, per action "
        "(csms_command_seconds).",
        quantiles("csms_command_seconds", by="action", qs=(0.99,)), unit="s", may_be_empty=True))

    # Bus and outbox
    depth = panel(
        "timeseries", "Outbox depth",
        "Events (left axis) and bytes (right axis) durable in the outbox and not yet confirmed committed by ingest "
        "(csms_outbox_pending_events, csms_outbox_pending_bytes). Growth means ingest or the bus is behind.",
        prom_targets(("sum(csms_outbox_pending_events)", "events"), ("sum(csms_outbox_pending_bytes)", "bytes")),
        fields=field_config(unit="none", custom=TIMESERIES_CUSTOM, overrides=[
            override("bytes", ("unit", "bytes"), ("custom.axisPlacement", "right"))]),
        options=timeseries_options())
    lay.add(depth, 8, 8)
    lay.add(*_rate_panel(
        "Outbox oldest event age", "Age of the oldest unconfirmed outbox event on each node "
        "(csms_outbox_oldest_age_seconds).",
        [prom_target("max(csms_outbox_oldest_age_seconds)", "oldest")], unit="s"))
    lay.add(*_rate_panel(
        "Publish latency", "Time until published events are durable in the outbox (csms_bus_publish_seconds) and "
        "until the broker acknowledged a window of batches (csms_bus_mqtt_publish_seconds): median and p99.",
        [*quantiles("csms_bus_publish_seconds", legend_prefix="durable "),
         *[dict(t, refId=chr(ord("C") + i))
           for i, t in enumerate(quantiles("csms_bus_mqtt_publish_seconds", legend_prefix="mqtt "))]],
        unit="s"))
    lay.add(*_rate_panel(
        "Bus batches published", "Outbox batches published to MQTT per second, including resends "
        "(csms_bus_published_batches_total).",
        [prom_target("sum(rate(csms_bus_published_batches_total[5m]))", "batches")], unit="ops"))
    lay.add(*_rate_panel(
        "Bus resends and outbox refusals", "Times unconfirmed batches were sent again (csms_bus_resends_total) and "
        "publishes refused because the outbox was full or failed (csms_outbox_refused_total), per second.",
        prom_targets(("sum(rate(csms_bus_resends_total[5m]))", "resends"),
                     ("sum(rate(csms_outbox_refused_total[5m]))", "refused")),
        unit="ops", may_be_empty=True))
    lay.add(*_rate_panel(
        "DB pool", "Database connections open and in use per role "
        "(csms_db_pool_connections, csms_db_pool_idle_connections).",
        prom_targets(("sum by (role) (csms_db_pool_connections)", "{{role}} open"),
                     ("sum by (role) (csms_db_pool_connections - csms_db_pool_idle_connections)", "{{role}} in use")),
        unit="none"))
    lay.add(*_rate_panel(
        "Garbage-collection pauses", "99th percentile of the time a process stood still in one garbage collection, "
        "by generation, over all roles (csms_gc_pause_seconds). Every connection of a gateway waits for it: a "
        "rise here shows up as the fleet's answer latency.",
        quantiles("csms_gc_pause_seconds", by="generation", qs=(0.99,)), unit="s"))

    # Ingest
    lay.add(*_rate_panel(
        "Ingest rows written", "Rows committed per second, by table (csms_ingest_rows_written_total).",
        [prom_target("sum by (table) (rate(csms_ingest_rows_written_total[5m]))", "{{table}}")], unit="rowsps"))
    lay.add(*_rate_panel(
        "Ingest duplicates absorbed", "Rows per second that were already stored (redelivery after a reconnect, "
        "retries) and were absorbed by the natural keys, by table (csms_ingest_duplicates_absorbed_total).",
        [prom_target("sum by (table) (rate(csms_ingest_duplicates_absorbed_total[5m]))", "{{table}}")],
        unit="rowsps"))
    lay.add(*_rate_panel(
        "Ingest end-to-end lag", "Charger message received by the central system → row committed: median and p99 "
        "over 5 minutes (csms_ingest_end_to_end_lag_seconds).",
        quantiles("csms_ingest_end_to_end_lag_seconds"), unit="s"))
    lay.add(*_rate_panel(
        "Batch commit latency", "Time to commit one ingest batch: median and p99 (csms_ingest_commit_seconds).",
        quantiles("csms_ingest_commit_seconds"), unit="s"))
    lay.add(*_rate_panel(
        "Batch size", "Rows per committed batch: median and p99 (csms_ingest_batch_rows).",
        quantiles("csms_ingest_batch_rows"), unit="none"))
    lay.add(*_rate_panel(
        "Ingest backlog", "Bus messages received by the ingest workers but not yet committed "
        "(csms_ingest_pending_messages).",
        [prom_target("sum(csms_ingest_pending_messages)", "pending")], unit="none"))
    lay.add(*_rate_panel(
        "Ingest failures", "Batches that failed to commit (csms_ingest_write_failures_total; the worker retries "
        "them) and bus messages that could not be decoded (csms_ingest_malformed_messages_total), per second.",
        prom_targets(("sum(rate(csms_ingest_write_failures_total[5m]))", "write failures"),
                     ("sum(rate(csms_ingest_malformed_messages_total[5m]))", "malformed messages")),
        unit="ops", may_be_empty=True))
    lay.add(*_rate_panel(
        "Data-quality flags", "Stored samples and sessions carrying a data-quality flag, by kind, per hour "
        "(csms_data_quality_flags_total): register went backwards, sample outside its session, clock skew, "
        "implausible unit ...",
        [prom_target("sum by (kind) (increase(csms_data_quality_flags_total[1h]))", "{{kind}}")],
        unit="none", may_be_empty=True))
    flag_rows = ",\n                ".join(f"({bit}, '{name}')" for bit, name in QUALITY_FLAGS.items())
    lay.add(panel(
        "table", "Flagged rows by kind (database)",
        "Meter samples and sessions stored in the time range with each data-quality flag set (meter_samples."
        "quality_flags, transactions.quality_flags; the bits are defined in schemas/events.py).",
        [sql_target(f"""
            WITH kinds (bit, kind) AS (
                VALUES {flag_rows}
            ),
            flagged_samples AS (
                SELECT quality_flags FROM meter_samples WHERE $__timeFilter(time) AND quality_flags <> 0
            ),
            flagged_sessions AS (
                SELECT quality_flags FROM transactions WHERE $__timeFilter(started_at) AND quality_flags <> 0
            )
            SELECT k.kind AS "Kind",
                   (SELECT count(*) FROM flagged_samples AS s WHERE s.quality_flags & k.bit <> 0) AS "Meter samples",
                   (SELECT count(*) FROM flagged_sessions AS s WHERE s.quality_flags & k.bit <> 0) AS "Sessions"
            FROM kinds AS k
            ORDER BY k.bit
        """)],
        options=table_options()), 8, 8)
    lay.add(panel(
        "table", "Running versions",
        "Which version each role (serve, ingest) runs, and on how many scraped processes (csms_build_info).",
        [prom_target("count by (version, role) (csms_build_info)", "", instant=True)],
        options=table_options()), 8, 8)
    return dashboard(
        DASHBOARD_UIDS["operations"], "CSMS · Operations",
        "Health of the OCPP gateway, the MQTT bus and outbox, ingest and the database.", lay.panels,
        tags=["operations"], time_from="now-1h", refresh="30s")


# --------------------------------------------------------------------------- output


def build() -> dict[str, Json]:
    """Every dashboard, by file name."""
    return {
        "fleet-overview.json": fleet_overview(),
        "charger-detail.json": charger_detail(),
        "utilization.json": utilization(),
        "operations.json": operations(),
    }


def render(dashboard_json: Json) -> str:
    return json.dumps(dashboard_json, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="only compare, exit 1 when a file is out of date")
    parser.add_argument("--out", type=Path, default=DASHBOARDS_DIR, help="output directory (default: %(default)s)")
    args = parser.parse_args(argv)
    out: Path = args.out
    wanted = {name: render(d) for name, d in build().items()}
    stale = sorted(p.name for p in out.glob("*.json") if p.name not in wanted) if out.is_dir() else []
    if args.check:
        changed = [name for name, text in wanted.items()
                   if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text]
        for name in [*changed, *stale]:
            print(f"out of date: {out / name}", file=sys.stderr)
        return 1 if changed or stale else 0
    out.mkdir(parents=True, exist_ok=True)
    for name in stale:
        (out / name).unlink()
    for name, text in wanted.items():
        (out / name).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
