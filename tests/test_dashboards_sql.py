"""The Grafana dashboards: generated deterministically, well-formed, and every SQL panel answers.

* ``deploy/grafana/generate.py`` is deterministic and the committed JSON is what it writes;
* every dashboard is valid JSON with a unique uid, every panel uses one of the two
  provisioned datasources, SQL targets say how Grafana should read them, and PromQL uses
  only metrics the system exports (the PromQL itself is evaluated in tests/test_prometheus.py);
* every SQL target (and the charger variable's query), expanded as Grafana would for the last
  24 hours, runs against a TimescaleDB filled by simulated 1.6 and 2.0.1 chargers and returns
  at least one row;
* tests/grafana_sql.py, the macro expander used for that, does what Grafana does.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import asyncpg
import pytest

from csms.store.registry import LocationSpec, upsert_location
from schemas.events import QUALITY_FLAG_NAMES
from schemas.migrate import apply_migrations
from tests.central import PASSWORD, running_central
from tests.grafana_sql import QueryContext, expand, format_interval, parse_interval, replace_variables, rfc3339
from tests.harness import PostgresService
from tests.traffic import drive_fleet

REPO = Path(__file__).resolve().parents[1]
GRAFANA_DIR = REPO / "deploy" / "grafana"
GENERATOR = GRAFANA_DIR / "generate.py"
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCE_TYPES = {"timescaledb": "grafana-postgresql-datasource", "prometheus": "prometheus"}

CHARGERS_16 = ["DASH16-A", "DASH16-B"]
CHARGERS_201 = ["DASH201-C"]
# The charger-templated panels run for a 1.6 and a 2.0.1 charger.
DETAIL_CHARGERS = [CHARGERS_16[0], CHARGERS_201[0]]

# Every metric the system exports (csms/gateway/metrics.py, ingest/metrics.py, csms/run/gc_metrics.py);
# histograms add suffixes.
METRICS = frozenset({
    "csms_build_info", "csms_chargers_connected", "csms_connections_opened_total", "csms_connections_closed_total",
    "csms_handshake_failures_total", "csms_ocpp_messages_total", "csms_ocpp_callerrors_sent_total",
    "csms_ocpp_callerrors_received_total", "csms_commands_total", "csms_ocpp_unsolicited_responses_total",
    "csms_ocpp_schema_violations_tolerated_total", "csms_commands_outstanding", "csms_outbox_pending_events",
    "csms_outbox_pending_bytes", "csms_outbox_oldest_age_seconds", "csms_bus_connected",
    "csms_outbox_refused_total", "csms_bus_published_batches_total", "csms_bus_resends_total",
    "csms_db_pool_connections", "csms_db_pool_idle_connections", "csms_ingest_rows_written_total",
    "csms_ingest_duplicates_absorbed_total", "csms_ingest_write_failures_total",
    "csms_ingest_malformed_messages_total", "csms_data_quality_flags_total", "csms_ingest_pending_messages",
})
HISTOGRAMS = frozenset({
    "csms_ocpp_handling_seconds", "csms_bus_publish_seconds", "csms_command_seconds",
    "csms_bus_mqtt_publish_seconds", "csms_ingest_batch_rows", "csms_ingest_commit_seconds",
    "csms_ingest_end_to_end_lag_seconds", "csms_gc_pause_seconds",
})
KNOWN_METRICS = METRICS | {h + suffix for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}


# --------------------------------------------------------------------------- reading dashboards


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("csms_grafana_generate", GENERATOR)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generated() -> dict[str, str]:
    """File name → JSON text, as the generator would write it now."""
    module = load_generator()
    build: Callable[[], dict[str, dict[str, Any]]] = module.build
    render: Callable[[dict[str, Any]], str] = module.render
    return {name: render(d) for name, d in build().items()}


def committed() -> dict[str, dict[str, Any]]:
    dashboards: dict[str, dict[str, Any]] = {}
    for path in sorted(DASHBOARDS_DIR.glob("*.json")):
        loaded = json.loads(path.read_text(encoding="utf-8"))
        assert isinstance(loaded, dict), path
        dashboards[path.name] = loaded
    return dashboards


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for item in dashboard.get("panels", []):
        out.append(item)
        out.extend(item.get("panels", []))     # panels inside rows
    return out


@dataclass(frozen=True)
class SqlQuery:
    dashboard: str
    panel: str
    ref_id: str
    raw_sql: str
    fmt: str = "table"

    @property
    def where(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}"

    @property
    def templated(self) -> bool:
        return "charge_point" in self.raw_sql


def sql_queries() -> list[SqlQuery]:
    queries: list[SqlQuery] = []
    for name, dashboard in committed().items():
        for var in dashboard.get("templating", {}).get("list", []):
            if var.get("type") == "query" and var.get("datasource", {}).get("uid") == "timescaledb":
                query = var["query"]
                raw = query if isinstance(query, str) else query["rawSql"]
                queries.append(SqlQuery(name, f"variable ${var['name']}", "query", raw))
        for panel in panels_of(dashboard):
            for target in panel.get("targets", []):
                if target.get("datasource", {}).get("uid") == "timescaledb":
                    queries.append(SqlQuery(name, panel["title"], target["refId"], target["rawSql"],
                                            target["format"]))
    return queries


SQL_QUERIES = sql_queries()


# --------------------------------------------------------------------------- (a) generation


def test_generator_is_deterministic_and_the_committed_json_is_fresh() -> None:
    first, second = generated(), generated()
    assert first == second, "two runs of deploy/grafana/generate.py differ"
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in sorted(DASHBOARDS_DIR.glob("*.json"))}
    assert sorted(on_disk) == sorted(first), "dashboard files differ from the generated set"
    stale = [name for name, text in first.items() if on_disk[name] != text]
    assert not stale, f"{stale} are out of date: run `python deploy/grafana/generate.py`"
    for text in first.values():   # sorted keys: a change in the script reads as a small diff
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def test_generator_check_mode_reports_stale_files(tmp_path: Path) -> None:
    main: Callable[[list[str]], int] = load_generator().main
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--check", "--out", str(tmp_path)]) == 0
    assert main(["--check"]) == 0, "the committed dashboards are out of date"
    (tmp_path / "old.json").write_text("{}", encoding="utf-8")
    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert main(["--out", str(tmp_path)]) == 0
    assert not (tmp_path / "old.json").exists()


def test_generator_quality_flags_match_the_schema() -> None:
    flags: dict[int, str] = load_generator().QUALITY_FLAGS
    assert flags == QUALITY_FLAG_NAMES


# --------------------------------------------------------------------------- (b) well-formed


def test_dashboards_are_valid_with_unique_uids() -> None:
    dashboards = committed()
    assert len(dashboards) == 4, sorted(dashboards)
    assert not (DASHBOARDS_DIR / ".gitkeep").exists()
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids), uids
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles), titles
    for name, d in dashboards.items():
        assert re.fullmatch(r"[a-z0-9-]{1,40}", str(d["uid"])), name
        assert 36 <= d["schemaVersion"] <= 41, name
        assert d["panels"], name
        ids = [p["id"] for p in panels_of(d)]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"


def test_every_panel_uses_a_provisioned_datasource() -> None:
    for name, dashboard in committed().items():
        for panel in panels_of(dashboard):
            where = f"{name} / {panel.get('title')!r}"
            ds = panel.get("datasource")
            assert isinstance(ds, dict), f"{where}: datasource {ds}"
            assert ds.get("uid") in DATASOURCE_TYPES, f"{where}: datasource {ds}"
            assert ds["type"] == DATASOURCE_TYPES[ds["uid"]], where
            assert panel["targets"], f"{where}: no targets"
            assert panel.get("description"), f"{where}: say what the panel answers"
            grid = panel["gridPos"]
            assert grid["x"] >= 0, where
            assert grid["x"] + grid["w"] <= 24, where
            assert grid["h"] > 0, where
            for target in panel["targets"]:
                assert target["datasource"] == ds, f"{where} / {target['refId']}: datasource differs from panel"
                if ds["uid"] == "timescaledb":
                    assert target["rawSql"].strip(), where
                    assert target.get("rawQuery") is True, where
                    assert target["format"] in ("time_series", "table"), where
                    if target["format"] == "time_series":
                        assert '"time"' in target["rawSql"] or "$__timeGroupAlias" in target["rawSql"], where
                else:
                    expr = target["expr"]
                    assert expr.strip(), where
                    assert "$" not in expr, f"{where}: PromQL must not need Grafana variables: {expr}"
                    unknown = set(re.findall(r"\bcsms_\w+", expr)) - KNOWN_METRICS
                    assert not unknown, f"{where}: metrics the system does not export: {unknown}"
    for var in committed()["charger-detail.json"]["templating"]["list"]:
        assert var["datasource"] == {"type": "grafana-postgresql-datasource", "uid": "timescaledb"}


def test_panels_do_not_overlap() -> None:
    for name, dashboard in committed().items():
        cells: dict[tuple[int, int], str] = {}
        for panel in panels_of(dashboard):
            g = panel["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {panel['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = panel["title"]


def test_every_sql_query_expands() -> None:
    ctx = QueryContext.last(timedelta(hours=24), variables={"charge_point": "X"})
    assert SQL_QUERIES
    for q in SQL_QUERIES:
        sql = expand(q.raw_sql, ctx)
        assert "$" not in sql, f"{q.where}: {sql}"


# --------------------------------------------------------------------------- (c) against real data


@pytest.fixture(scope="module")
async def traffic_db(postgres: PostgresService) -> AsyncIterator[str]:
    """One database with two 1.6 and one 2.0.1 charger's traffic and a located station, for every query."""
    db_url = postgres.create_database("dash")
    try:
        conn = await asyncpg.connect(db_url)
        try:
            await apply_migrations(conn)
            await upsert_location(conn, LocationSpec(id="LOC-DEPOT", name="Depot", city="Berlin", country="DEU",
                                                     latitude=52.52, longitude=13.405, time_zone="Europe/Berlin"))
            async with running_central(db_url) as central:
                for cp in (*CHARGERS_16, *CHARGERS_201):
                    await central.register(cp)
                await central.add_token("TRAFFIC-TAG")
                await drive_fleet(central.ws_base, PASSWORD, CHARGERS_16, CHARGERS_201)
            await conn.execute("UPDATE charge_points SET location_id = 'LOC-DEPOT' WHERE id = ANY($1::text[])",
                               [*CHARGERS_16, *CHARGERS_201])
            assert await conn.fetchval("SELECT count(*) FROM transactions WHERE stopped_at IS NOT NULL") == 3
        finally:
            await conn.close()
        yield db_url
    finally:
        postgres.drop_database(db_url)


@pytest.mark.integration
@pytest.mark.parametrize("query", [pytest.param(q, id=f"{q.dashboard}/{q.panel}/{q.ref_id}") for q in SQL_QUERIES])
async def test_sql_panel_returns_rows(traffic_db: str, query: SqlQuery) -> None:
    now = datetime.now(UTC)
    chargers = DETAIL_CHARGERS if query.templated else ["(unused)"]
    conn = await asyncpg.connect(traffic_db)
    try:
        for charger in chargers:
            ctx = QueryContext.last(timedelta(hours=24), now=now, variables={"charge_point": charger})
            sql = expand(query.raw_sql, ctx)
            try:
                rows = await conn.fetch(sql)
            except asyncpg.PostgresError as exc:
                raise AssertionError(f"{query.where} (charge_point={charger}) fails: {exc}\n{sql}") from exc
            assert rows, f"{query.where} (charge_point={charger}) returned no rows\n{sql}"
            if query.fmt == "time_series":
                assert "time" in rows[0], f"{query.where}: a time series needs a time column"
                times = [r["time"] for r in rows]
                assert times == sorted(times), f"{query.where}: a time series must be sorted by time"
    finally:
        await conn.close()


# --------------------------------------------------------------------------- the expander


FROM = datetime(2025, 3, 1, 10, 0, 0, tzinfo=UTC)
TO = datetime(2025, 3, 2, 10, 0, 0, 500_000, tzinfo=UTC)
CTX = QueryContext(FROM, TO, timedelta(minutes=2), {"charge_point": "CP-1", "quote": "O'Hare"})


def test_time_filter_and_range_macros() -> None:
    assert expand("WHERE $__timeFilter(time)", CTX) == \
        "WHERE time BETWEEN '2025-03-01T10:00:00Z' AND '2025-03-02T10:00:00.5Z'"
    assert expand("$__timeFrom() .. $__timeTo()", CTX) == "'2025-03-01T10:00:00Z' .. '2025-03-02T10:00:00.5Z'"
    assert expand("$__unixEpochFilter(ts)", CTX) == "ts >= 1740823200 AND ts <= 1740909600"
    assert expand("$__unixEpochFrom() $__unixEpochTo()", CTX) == "1740823200 1740909600"
    assert expand("$__unixEpochNanoFilter(ns)", CTX) == \
        "ns >= 1740823200000000000 AND ns <= 1740909600500000000"
    assert expand("SELECT $__time(t), $__timeEpoch(t)", CTX) == \
        'SELECT t AS "time", extract(epoch from t) as "time"'


def test_time_group_macros() -> None:
    assert expand("$__timeGroup(time, '5m')", CTX) == "time_bucket('300.000s',time)"
    assert expand("$__timeGroupAlias(started_at, 1h)", CTX) == "time_bucket('3600.000s',started_at) AS \"time\""
    assert expand("$__timeGroupAlias( time , $__interval, 0)", CTX) == "time_bucket('120.000s',time) AS \"time\""
    plain = QueryContext(FROM, TO, timescaledb=False)
    assert expand("$__timeGroup(t, '1d')", plain) == "floor(extract(epoch from t)/86400)*86400"
    assert expand("$__timeGroupAlias(t, '500ms')", plain) == 'floor(extract(epoch from t)/0.5)*0.5 AS "time"'
    assert expand("$__unixEpochGroupAlias(ts, '1m')", CTX) == 'floor((ts)/60)*60 AS "time"'
    # Grafana < 5.3 compatibility: a bare $__timeGroup followed by "," is aliased
    assert expand("SELECT $__timeGroup(t, 1h), v FROM x GROUP BY $__timeGroup(t, '1h')", CTX) == \
        "SELECT time_bucket('3600.000s',t) AS \"time\", v FROM x GROUP BY time_bucket('3600.000s',t)"


def test_interval_variables() -> None:
    assert expand("$__interval / $__interval_ms", CTX) == "2m / 120000"
    assert expand("${__interval}", CTX) == "2m"
    assert format_interval(timedelta(seconds=90)) == "1m"
    assert format_interval(timedelta(hours=36)) == "1d"
    assert format_interval(timedelta(milliseconds=250)) == "250ms"
    assert parse_interval("'15s'") == timedelta(seconds=15)
    assert parse_interval("1w") == timedelta(days=7)
    with pytest.raises(ValueError, match="interval"):
        parse_interval("5 minutes")


def test_template_variables() -> None:
    for form in ("'$charge_point'", "'${charge_point}'", "'[[charge_point]]'"):
        assert expand(f"WHERE id = {form}", CTX) == "WHERE id = 'CP-1'", form
    assert expand("x = '$quote'", CTX) == "x = 'O''Hare'"
    assert expand("x = ${quote:sqlstring}", CTX) == "x = 'O''Hare'"
    assert expand("x = ${charge_point:raw}", CTX) == "x = CP-1"
    assert replace_variables("$__timeFilter(t) AND $charge_point", CTX) == "$__timeFilter(t) AND CP-1"
    # a longer name is a different variable
    with pytest.raises(ValueError, match="charge_points"):
        expand("$charge_points", CTX)


def test_mistakes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown macro"):
        expand("$__timeFiltre(time)", CTX)
    with pytest.raises(ValueError, match="needs"):
        expand("$__timeGroup(time)", CTX)
    with pytest.raises(ValueError, match="unknown template variable"):
        expand("WHERE id = '$charger'", CTX)
    with pytest.raises(ValueError, match="naive"):
        rfc3339(datetime(2025, 1, 1))
