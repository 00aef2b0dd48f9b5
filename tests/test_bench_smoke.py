"""A small run of the whole benchmark suite (``python -m csms.bench --quick``) so that it keeps working.

No timing is asserted (benchmarks report figures; tests do not judge wall-clock speed on a
shared machine). What is asserted: every benchmark ran without errors, every figure stands
next to a same-run baseline with its ratio, the load was really carried (answers, stored
rows, negotiated compression, reconnected chargers), and the report, JSON and plots exist.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from csms.bench import ocpp_throughput, suite

pytestmark = pytest.mark.integration

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
async def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    data = await asyncio.to_thread(suite.run, suite.QUICK, out, log=lambda _: None)
    return out, data


def test_every_benchmark_ran(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    expected = {"ocpp_throughput", "connections", "ingest", "steady_fleet", "fleet_workers", "reconnect_storm",
                "command_latency"}
    if suite._reports_module() is not None:
        expected.add("report_queries")
    assert set(data["benchmarks"]) == expected
    assert {k: v["error"] for k, v in data["benchmarks"].items() if "error" in v} == {}
    benchmarks_with_figures = {f["benchmark"] for f in data["figures"]}
    assert benchmarks_with_figures == expected


def test_every_figure_has_its_baseline_and_ratio(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    assert data["figures"]
    for f in data["figures"]:
        assert f["baseline"], f
        assert f["value"] >= 0, f
        assert f["baseline_value"] > 0, f
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline_value"], abs=1e-3), f
        assert f["better"] in ("higher", "lower"), f
    assert {g["met"] for g in data["goals"]} <= {"yes", "no"}
    assert len(data["goals"]) >= 7
    issue13 = {g["goal"].split(":")[0].split(",")[0] for g in data["goals"]}
    assert {"restart storm", "command latency"} <= issue13, issue13
    assert any(g["goal"].startswith("memory per charger") for g in data["goals"])   # issue 15's ≤ 20 KiB


def test_the_load_was_carried(quick_run: tuple[Path, dict[str, Any]]) -> None:
    _, data = quick_run
    b = data["benchmarks"]
    throughput = b["ocpp_throughput"]
    assert [v["samples"] for v in throughput["variants"]] == [10, 1]
    for variant in throughput["variants"]:
        assert [f["server"] for f in variant["figures"]] == list(ocpp_throughput.SERVERS)
        assert all(f["messages"] > 0 and f["errors"] == 0 for f in variant["figures"])
        assert set(variant["ratio_to_echo_per_core"]) == set(ocpp_throughput.SERVERS)
    assert throughput["csms_samples_stored"] == throughput["csms_samples_expected"]

    steps = list(suite.QUICK.hold_steps)
    for series in b["connections"]["series"]:
        assert [p["connections"] for p in series["points"]] == steps, series
        negotiated = series["points"][-1]["deflate_negotiated"]
        assert negotiated == (0 if series["deflate"] == "off" else steps[-1]), series

    assert all(v > 0 for v in b["ingest"]["rows_per_s"].values())

    fleet = b["steady_fleet"]
    for name, topology in fleet["topologies"].items():
        assert [p["chargers"] for p in topology["points"]] == list(suite.QUICK.fleet_sizes)
        for p in topology["points"]:
            assert p["ok"] == p["messages"] > 0, (name, p)
            assert (p["errors"], p["unanswered"]) == (0, 0), (name, p)
            if name != "echo":
                # every answered MeterValues has its committed row, and a row commits after it was sent
                assert p["rows_stored"] == p["ok"], (name, p)
                assert 0 < p["call_row_ms"]["p50"] <= p["call_row_ms"]["p99"], (name, p)

    scale = b["fleet_workers"]
    assert scale["workers"] == suite.QUICK.scale_workers
    assert [p["held"] for p in scale["csms"]["points"]] == list(suite.QUICK.scale_steps)
    assert scale["csms"]["ran_out"] == ""
    for side in ("csms", "raw"):
        last, steady = scale[side]["points"][-1], scale[side]["steady"]
        # the raw baseline holds as many chargers as csms held, with deflate negotiated on every one
        assert last["held"] == last["deflate_negotiated"] == suite.QUICK.scale_steps[-1], (side, last)
        assert last["rss_bytes"] > 0
        assert last["worker_max_open_files"] >= last["held"] // scale["workers"]
        assert steady["ok"] == steady["messages"] > 0, (side, steady)
        assert (steady["errors"], steady["unanswered"]) == (0, 0), (side, steady)
    assert scale["csms"]["steady"]["rows_stored"] == scale["csms"]["steady"]["ok"]

    storm = b["reconnect_storm"]
    assert storm["workers"] == suite.QUICK.storm_workers
    assert {run["chargers"] for run in storm["runs"].values()} == {suite.QUICK.storm_chargers,
                                                                   suite.QUICK.storm_argon2id_chargers}
    for run in storm["runs"].values():
        assert run["initial_booted"] == run["chargers"]
        assert (run["restart"]["booted"], run["restart"]["missing"]) == (run["chargers"], 0), run
        assert run["restart"]["boots_per_s"] > 0, run

    commands = b["command_latency"]
    assert commands["failures"] == 0
    assert 0 < commands["local"]["p50_ms"] <= commands["local"]["p99_ms"]
    assert 0 < commands["cross_node"]["p50_ms"] <= commands["cross_node"]["p99_ms"]


def test_report_json_and_plots_are_written(quick_run: tuple[Path, dict[str, Any]]) -> None:
    out, data = quick_run
    assert json.loads((out / "benchmarks.json").read_text()) == json.loads(json.dumps(data))
    md = (out / "benchmarks.md").read_text()
    for needle in ("## Machine", "## Goals", "## Figures and their baselines", data["machine"]["cpu_model"],
                   "PostgreSQL / TimescaleDB", "Mosquitto", "pg_xact_commit_timestamp", "bench-latency.png",
                   "bench-rss.png", "A fleet across gateway workers", "Command latency: local vs cross-node"):
        assert needle in md
    for f in data["figures"]:
        assert f["figure"] in md
    for name in data["plots"].values():
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert set(data["plots"]) == {"rss", "latency"}
