"""A real Prometheus (Debian's ``/usr/bin/prometheus``) on a free loopback port, for tests.

It scrapes the given targets every second, loads the given rule files, keeps its TSDB and
its own log in a temporary directory, and is queried through its HTTP API. Every wait is
bounded in time; ``stop()`` ends the process this module started and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from csms.run.ports import free_port
from tests.harness import make_shared_tmpdir

SCRAPE_INTERVAL_S = 1
HTTP_TIMEOUT_S = 10.0


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        raise RuntimeError("prometheus not installed: run deploy/setup.sh (Debian's prometheus package)")
    return found


@dataclass(frozen=True)
class QueryResult:
    """The answer to an instant query: ``status`` is "success" or "error"."""

    status: str
    result_type: str = ""
    result: list[Any] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def series(self) -> int:
        """Series returned (a scalar or string counts as one value)."""
        if self.result_type in ("scalar", "string"):
            return 1
        return len(self.result)

    def brief(self, limit: int = 5) -> str:
        if not self.ok:
            return f"error: {self.error}"
        if self.result_type in ("scalar", "string"):
            return f"{self.result_type} {self.result}"
        shown = [f"{item.get('metric', {})} = {item.get('value', ['', '?'])[1]}" for item in self.result[:limit]]
        more = f" … and {len(self.result) - limit} more" if len(self.result) > limit else ""
        return f"{self.result_type} of {len(self.result)}: " + "; ".join(shown) + more


@dataclass
class PrometheusService:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def log(self, tail: int = 8000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError as exc:
            return f"(no Prometheus log: {exc})"

    # ----------------------------------------------------------------- HTTP API

    def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=HTTP_TIMEOUT_S)
        try:
            return response.json()
        except json.JSONDecodeError:
            return {"status": "error", "error": f"HTTP {response.status_code}: {response.text[:500]}"}

    def query(self, expr: str) -> QueryResult:
        """An instant query at the current time."""
        body = self._get("/api/v1/query", {"query": expr})
        if body.get("status") != "success":
            return QueryResult(status="error", error=f"{body.get('errorType', '')}: {body.get('error', body)}")
        data = body["data"]
        result = data["result"]
        return QueryResult(status="success", result_type=str(data["resultType"]),
                           result=result if isinstance(result, list) else [result])

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", {"state": "active"})["data"]["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/rules")["data"]["groups"])

    # ----------------------------------------------------------------- waits

    def _check_alive(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode} {what}:\n{self.log()}")

    def wait_ready(self, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive("while starting")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/-/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready after {timeout_s} s:\n{self.log()}")

    def wait_targets_up(self, jobs: Iterable[str], timeout_s: float = 30) -> None:
        wanted = set(jobs)
        deadline = time.monotonic() + timeout_s
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self._check_alive("while waiting for targets")
            targets = self.targets()
            up = {t["labels"]["job"] for t in targets if t.get("health") == "up"}
            down = {t["labels"]["job"] for t in targets if t.get("health") != "up"}
            if wanted <= up and not (wanted & down):
                return
            time.sleep(0.2)
        summary = [(t["labels"].get("job"), t.get("health"), t.get("lastError")) for t in targets]
        raise RuntimeError(f"targets of {sorted(wanted)} not all up after {timeout_s} s: {summary}\n{self.log()}")

    def wait_scrapes(self, jobs: Iterable[str], *, count: int, timeout_s: float = 30) -> None:
        """Wait until every target of ``jobs`` has been scraped successfully ``count`` more times."""
        wanted = set(jobs)
        baseline: dict[str, str] = {}
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive("while waiting for scrapes")
            current = {t["scrapeUrl"]: t for t in self.targets() if t["labels"]["job"] in wanted}
            for url, target in current.items():
                stamp = str(target.get("lastScrape"))
                baseline.setdefault(url, stamp)
                if target.get("health") == "up" and stamp != baseline[url]:
                    seen.setdefault(url, set()).add(stamp)
            jobs_present = {t["labels"]["job"] for t in current.values()}
            if wanted <= jobs_present and all(len(seen.get(url, ())) >= count for url in current):
                return
            time.sleep(SCRAPE_INTERVAL_S / 4)
        raise RuntimeError(f"fewer than {count} scrapes of {sorted(wanted)} in {timeout_s} s: "
                           f"{ {url: len(s) for url, s in seen.items()} }\n{self.log()}")

    def wait_rules_evaluated(self, *, after: float, timeout_s: float = 15) -> list[dict[str, Any]]:
        """Wait until every rule group was evaluated after the Unix time ``after``; its groups."""
        deadline = time.monotonic() + timeout_s
        groups: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            self._check_alive("while waiting for rule evaluations")
            groups = self.rule_groups()
            if groups and all(_rfc3339_after(str(g.get("lastEvaluation", "")), after) for g in groups):
                return groups
            time.sleep(0.2)
        raise RuntimeError(f"rule groups not evaluated after {after} within {timeout_s} s: "
                           f"{[(g.get('name'), g.get('lastEvaluation')) for g in groups]}\n{self.log()}")

    # ----------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _rfc3339_after(stamp: str, after: float) -> bool:
    """Whether an RFC 3339 time from Prometheus (nanosecond fractions) is later than ``after``."""
    match = _RFC3339.match(stamp)
    if match is None:
        return False
    whole, fraction, zone = match.groups()
    parsed = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return parsed.timestamp() + float("0." + (fraction or "0")) > after


def prometheus_config(targets: dict[str, list[str]], rule_files: Iterable[Path]) -> dict[str, Any]:
    interval = f"{SCRAPE_INTERVAL_S}s"
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval},
        "rule_files": [str(path.resolve()) for path in rule_files],
        "scrape_configs": [{"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": hosts}]}
                           for job, hosts in targets.items()],
    }


def start_prometheus(workdir: Path, targets: dict[str, list[str]], rule_files: Iterable[Path]) -> PrometheusService:
    """Start Prometheus scraping ``targets`` (job -> ["127.0.0.1:port", ...]) with ``rule_files``."""
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    data = workdir / "data"
    data.mkdir(exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(targets, rule_files), sort_keys=False), encoding="utf-8")
    port = free_port()
    with (workdir / "prometheus.log").open("ab") as log:
        proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={data}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h",
             "--log.level=info"],
            cwd=workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    service = PrometheusService(port=port, workdir=workdir, proc=proc)
    try:
        service.wait_ready()
    except BaseException:
        service.stop()
        raise
    return service


@contextlib.contextmanager
def running_prometheus(targets: dict[str, list[str]], rule_files: Iterable[Path]) -> Iterator[PrometheusService]:
    """Prometheus in its own temporary directory, stopped and removed afterwards."""
    workdir = make_shared_tmpdir("csms-prometheus-")
    service: PrometheusService | None = None
    try:
        service = start_prometheus(workdir, targets, rule_files)
        yield service
    finally:
        if service is not None:
            service.stop()
        shutil.rmtree(workdir, ignore_errors=True)
