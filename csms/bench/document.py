"""``docs/benchmarks.md``: the machine, the goals, every figure with its baseline, then each benchmark."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from csms.bench import commands, connections, machine, ocpp_throughput, plots, scale, steady, storm

_UNSET = "–"


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _figures_table(figures: list[dict[str, Any]]) -> str:
    lines = ["| benchmark | figure | value | baseline (same run) | baseline value | ratio |",
             "|---|---|---|---|---|---|"]
    for f in figures:
        ratio = _UNSET if f["ratio"] is None else f"{f['ratio']:.2f} ({f['better']} is better)"
        lines.append(f"| {f['benchmark']} | {f['figure']} | {_num(f['value'])} {f['unit']} | {f['baseline']} | "
                     f"{_num(f['baseline_value'])} {f['unit']} | {ratio} |")
    return "\n".join(lines)


def _goals_table(goals: list[dict[str, Any]]) -> str:
    lines = ["| goal | target | measured | met | note |", "|---|---|---|---|---|"]
    lines += [f"| {g['goal']} | {g['target']} | {g['measured']} | {g['met']} | {g['note']} |" for g in goals]
    return "\n".join(lines)


def _ingest(r: dict[str, Any]) -> str:
    rows, q = r["rows_per_s"], r["ratio_to_raw_copy"]
    return "\n".join([
        "| path | rows/s | ratio to raw COPY |", "|---|---|---|",
        f"| raw COPY into `meter_samples` (baseline: mean of {r['raw_copy_runs'][0]:,} before and "
        f"{r['raw_copy_runs'][1]:,} after) | {rows['raw_copy']:,} | 1.00 |",
        f"| idempotent writer batch | {rows['writer']:,} | {q['writer']:.2f} |",
        f"| bus → rows (MQTT → ingest worker → committed) | {rows['bus_to_rows']:,} | {q['bus_to_rows']:.2f} |"])


_SECTIONS: list[tuple[str, str, str, Callable[[dict[str, Any]], str]]] = [
    ("ocpp_throughput", "1. OCPP MeterValues per CSMS core",
     "Closed loop: N chargers, one CALL outstanding each, an OCPP 1.6 MeterValues per CALL: 10 sampled values "
     "(a 3-phase sample), then 1 (the energy register only), each with its own echo baseline. Each charger "
     "boots and starts a transaction first, so its samples belong to a session the server knows, as in the "
     "field (an unknown transactionId would send every sample down the flagged path). Each "
     "server is a separate process pinned to CPU 0, the load generator is pinned to CPU 1, and the figure is "
     "messages per CPU-second of the server process (wall-clock rates move with whatever else runs). The whole "
     "sequence of servers is run several times over (interleaved rounds), so the machine's drifting load falls on "
     "every server alike; each row is the server's median round, the ratio median against median, and its range "
     "the lowest and highest per-round ratio (each against the echo of the same round). csms runs "
     "with strict schema validation and answers only once the samples are durable: committed to TimescaleDB "
     "(in-process bus) or fsync'ed to the node's outbox (MQTT bus, a separate `csms ingest` commits them). "
     "Baselines: a raw websockets server that parses the JSON and answers `[3, id, {}]` (the transport "
     "ceiling), and the `ocpp` package's own v1.6 `ChargePoint` with default settings.",
     ocpp_throughput.render),
    ("connections", "2. Chargers held by one process, memory per connection",
     "Chargers are added in steps, each connecting (HTTP Basic auth against the registry for csms), booting "
     "and reporting its connector status, then idling; after each step the server's resident set size is "
     "read from /proc. KiB per connection = (RSS at the last step − RSS of the idle server) / connections; "
     "the marginal figure is the slope between the first and the last step. The clients come from several "
     "processes and 127.0.0.x source addresses. csms keeps its default 60 s websocket pings; the raw server "
     "sends none. Deflate \"on\" is the gateway's reduced windows, negotiated by both servers; \"on, no context "
     "takeover\" is a what-if on the raw server only.",
     connections.render),
    ("ingest", "3. Ingest samples/s",
     "The same 10-sample meter events written three ways into the same `meter_samples` hypertable, each on "
     "fresh keys: raw `COPY` (asyncpg `copy_records_to_table`, 5,000-row transactions, no de-duplication), "
     "our idempotent writer, and the whole bus path (MessagePack batches through Mosquitto, consumed by the "
     "ingest worker, acknowledged after commit), timed from the worker's start until every row is committed.",
     _ingest),
    ("steady_fleet", "4. Steady fleet: CALL→CALLRESULT and CALL→row committed",
     "Fleet sizes grow in steps on one running system; at each size every charger (booted, in a transaction) "
     "sends a 10-sample MeterValues every interval at its own random phase. CALL→CALLRESULT is timed by the "
     "charger. CALL→row committed: each sample's timestamp is the moment its charger sent it, to the "
     "microsecond (same host clock); PostgreSQL runs with `track_commit_timestamp = on`, and for every stored "
     "energy-register row `pg_xact_commit_timestamp(xmin) − time` is that MeterValues' CALL→row latency. "
     "Stored rows are counted against answered MeterValues (nothing answered may be missing). Baseline: the "
     "same fleet against the raw websockets echo server; for CALL→row also one client COPYing 10 rows per "
     "transaction with nothing else running (the commit floor).",
     steady.render),
    ("fleet_workers", "5. A fleet across gateway workers",
     "`csms serve --workers N` (SO_REUSEPORT) on the benchmark's PostgreSQL, a private Mosquitto and one "
     "`csms ingest`. Chargers offer permessage-deflate, come from several load-generator processes (each from "
     "its own 127.0.0.x address, at most 20,000 open files per process here) and are added in steps; each "
     "step must connect, authenticate, boot, report status and start a transaction within a bound, or the "
     "climb stops there and what ran out is named from measurements (load-generator and worker CPU, memory "
     "available, the fullest worker's open files, connections per source address). RSS per connection = "
     "(summed RSS of every worker − the idle workers) / chargers held. Then every charger held sends a "
     "10-sample MeterValues per interval at its own phase for a bounded time: CALL→CALLRESULT at the charger, "
     "CALL→row committed from commit timestamps, stored rows against answered MeterValues. Baseline: the same "
     "fleet and load against N raw websockets echo processes sharing the port with the same deflate windows.",
     scale.render),
    ("reconnect_storm", "6. Reconnect storm",
     "N chargers connected and booted; then (drop) every TCP connection is aborted at once while the server "
     "keeps running, or (restart) the server is stopped with SIGTERM — it closes every charger with 1001 — "
     "and started again. Timed from that moment until every charger has reconnected, been authenticated and "
     "had a BootNotification accepted (chargers here boot again on every reconnect, the worst case). A failed "
     "attempt is retried after 0.25–0.75 s, far more aggressively than real chargers back off, so the server "
     "is the limit. After a restart the verified-credential cache is empty: every charger costs one Argon2id "
     "check at the production cost. Baseline: the same storms against the raw websockets server. With "
     "several workers (issue 13) the restart is every worker SIGKILLed at once and started again by the "
     "supervisor (raw: N echo processes on the port, killed and started again; no drop storm then); chargers "
     "carry HMAC credentials of generated passwords, and an Argon2id-only variant (fewer chargers, to bound the run) "
     "shows the old cost as a rate.",
     storm.render),
    ("command_latency", "7. Command latency: local vs cross-node",
     "Two `csms serve` nodes on one database and one Mosquitto, one charger on node B answering every CALL at "
     "once. ClearCache through B's API (local) and through A's API (A finds the charger in the fleet registry "
     "and sends the command over the broker to B, which writes it to the socket and publishes the reply), "
     "alternating, one at a time; the HTTP round trip of each.",
     commands.render),
]


def render(data: dict[str, Any], *, command: str, reports_render: Callable[[dict[str, Any]], str] | None) -> str:
    b = data["benchmarks"]
    out = [
        "# Benchmarks",
        "",
        f"Generated by `{command}` on {data['machine'].get('date', '?')} ({data['profile']} profile, "
        f"{data['duration_s']:.0f} s{'' if data['complete'] else '; INCOMPLETE: the run was still going'}). "
        "Machine-readable: [`benchmarks.json`](benchmarks.json). Every figure "
        "stands next to a baseline measured in the same run on the same machine; the ratios are what carries "
        "over to other machines, the absolute numbers are this machine's.",
        "",
        "## Machine",
        "",
        machine.render(data["machine"], data["note"]),
        "",
        "## Goals",
        "",
        _goals_table(data["goals"]),
        "",
        "## Figures and their baselines",
        "",
        _figures_table(data["figures"]),
        "",
    ]
    for key, title, method, table in _SECTIONS:
        out += [f"## {title}", "", method, ""]
        result = b.get(key)
        if result is None:
            out += ["Not run.", ""]
        elif "error" in result:
            out += [f"**Failed:** `{result['error']}`", ""]
        else:
            out += [table(result), ""]
            if key == "connections" and data.get("plots", {}).get("rss"):
                out += [f"![server RSS against connections held]({plots.RSS_PNG})", ""]
            if key == "steady_fleet" and data.get("plots", {}).get("latency"):
                out += [f"![latency percentiles against fleet size]({plots.LATENCY_PNG})", ""]
    out += ["## 8. Report query times on generated history", ""]
    result = b.get("report_queries")
    if result is None:
        out += ["Not run: `csms/bench/reports.py` is not in this tree yet (integration point in "
                "`csms/bench/suite.py`, `_report_queries`).", ""]
    elif "error" in result:
        out += [f"**Failed:** `{result['error']}`", ""]
    elif reports_render is not None:
        out += [reports_render(result), ""]
    out += ["## How the servers under test were configured", "", *[f"* {line}" for line in data["configuration"]],
            "", "## Re-running", "", "```sh", data["rerun"], "```", ""]
    return "\n".join(out)
