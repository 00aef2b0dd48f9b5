"""What the benchmark ran on: hardware, kernel, limits and the versions of every moving part."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _mem_total_bytes() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def _mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10, check=False)
        for line in (out.stdout + out.stderr).splitlines():
            if "version" in line:
                return line.strip().removeprefix("mosquitto version ").strip()
    return "unknown"


def _git_commit() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        root = Path(__file__).resolve().parents[2]
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=False).stdout.strip()
        if head:
            return head + (" (with uncommitted changes)" if dirty else "")
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


async def describe(database_url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(database_url)
    try:
        pg = await conn.fetchval("SHOW server_version")
        tsdb = await conn.fetchval("SELECT default_version FROM pg_available_extensions WHERE name = 'timescaledb'")
        settings = {name: await conn.fetchval("SELECT current_setting($1)", name)
                    for name in ("fsync", "synchronous_commit", "shared_buffers", "track_commit_timestamp")}
    finally:
        await conn.close()
    load = os.getloadavg()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "cpu_model": _cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gib": round(_mem_total_bytes() / 2**30, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "open_files_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "postgresql": str(pg),
        "timescaledb": str(tsdb),
        "postgresql_settings": settings,
        "mosquitto": _mosquitto_version(),
        "packages": {p: _version(p) for p in ("websockets", "asyncpg", "ocpp", "aiomqtt", "jsonschema-rs", "uvloop",
                                              "argon2-cffi", "orjson")},
        "git_commit": _git_commit(),
        "load_average_at_start": [round(x, 2) for x in load],
    }


def render(machine: dict[str, Any], note: str) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    pg_settings = ", ".join(f"{k}={v}" for k, v in sorted(machine["postgresql_settings"].items()))
    return "\n".join([
        "| | |", "|---|---|",
        f"| date (UTC) | {machine['date']} |",
        f"| CPU | {machine['cpu_model']}, {machine['cpus']} cores |",
        f"| memory | {machine['memory_gib']} GiB |",
        f"| kernel / OS | {machine['kernel']} / {machine['os']} |",
        f"| open files per process | {machine['open_files_limit']:,} |",
        f"| Python | {machine['python']} ({pkgs}) |",
        f"| PostgreSQL / TimescaleDB | {machine['postgresql']} / {machine['timescaledb']} ({pg_settings}) |",
        f"| Mosquitto | {machine['mosquitto']} |",
        f"| code | {machine['git_commit']} |",
        f"| load average at start / end | {machine['load_average_at_start']} / "
        f"{machine.get('load_average_at_end', '-')} |",
        f"| note | {note} |",
    ])
