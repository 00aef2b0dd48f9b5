"""The report's figures (PNG, matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

LATENCY_PNG = "bench-latency.png"
RSS_PNG = "bench-rss.png"
_STYLE = {"echo": ("tab:gray", "raw websockets echo"), "embedded": ("tab:blue", "csms, in-process bus"),
          "mqtt": ("tab:orange", "csms, MQTT bus + ingest")}
_SERIES_STYLE = {("csms", "on"): ("tab:blue", "-"), ("csms", "off"): ("tab:blue", "--"),
                 ("raw", "on"): ("tab:gray", "-"), ("raw", "off"): ("tab:gray", "--"),
                 ("raw", "on-nct"): ("tab:green", ":")}


def latency(steady: dict[str, Any], path: Path) -> None:
    """p50/p99 CALL→CALLRESULT and CALL→row committed against fleet size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for topo in steady["topologies"].values():
        color, label = _STYLE.get(topo["topology"], ("black", topo["topology"]))
        sizes = [p["chargers"] for p in topo["points"]]
        for ax, key in ((left, "call_result_ms"), (right, "call_row_ms")):
            if not all(key in p for p in topo["points"]):
                continue
            ax.plot(sizes, [p[key]["p99"] for p in topo["points"]], "o-", color=color, label=f"{label} p99")
            ax.plot(sizes, [p[key]["p50"] for p in topo["points"]], "o--", color=color, label=f"{label} p50",
                    alpha=0.7)
    right.axhline(1000, color="tab:red", linewidth=1, label="goal: p99 ≤ 1 s")
    interval = steady["interval_s"]
    for ax, title in ((left, "CALL → CALLRESULT"), (right, "CALL → row committed")):
        ax.set_title(title)
        ax.set_xlabel(f"chargers (MeterValues every {interval:g} s)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    left.set_ylabel("latency, ms (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rss(connections: dict[str, Any], path: Path, goal_kib: float) -> None:
    """Server memory growth against connections held, ours and the raw websockets baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    labels = {"on": "deflate on", "off": "deflate off", "on-nct": "deflate on, no context takeover"}
    most = 0
    for s in connections["series"]:
        color, style = _SERIES_STYLE.get((s["server"], s["deflate"]), ("black", "-"))
        xs = [0] + [p["connections"] for p in s["points"]]
        ys = [0.0] + [(p["rss_bytes"] - s["idle_rss_bytes"]) / 2**20 for p in s["points"]]
        most = max(most, xs[-1])
        label = (f"{'csms' if s['server'] == 'csms' else 'raw websockets'}, "
                 f"{labels.get(s['deflate'], s['deflate'])} ({s['rss_per_connection_kib']:.0f} KiB/conn)")
        ax.plot(xs, ys, marker="o", linestyle=style, color=color, label=label)
    ax.plot([0, most], [0, most * goal_kib / 1024], color="tab:red", linewidth=1,
            label=f"goal: {goal_kib:g} KiB per connection")
    ax.set_xlabel("idle connections held by one server process (booted chargers)")
    ax.set_ylabel("server RSS above the idle server, MiB")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
