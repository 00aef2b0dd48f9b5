"""Start ``csms`` roles as real subprocesses and wait for them (bounded in time)."""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from csms.run.ports import free_port


@dataclass
class CsmsProcess:
    proc: subprocess.Popen[str]
    http_port: int
    ocpp_port: int
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.ocpp_port}/ocpp"

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    def wait_healthy(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"csms exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.http + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"csms not healthy after {timeout_s} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode


def basic_auth(charge_point_id: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{charge_point_id}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def csms_command(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout_s: float = 120.0) -> str:
    """Run a one-shot ``csms`` command; return its stdout, fail with its output otherwise."""
    proc = subprocess.run([sys.executable, "-m", "csms", *args], cwd=cwd, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"csms {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def start_csms(args: list[str], *, workdir: Path, env: dict[str, str] | None = None) -> CsmsProcess:
    http_port, ocpp_port = free_port(), free_port()
    log_path = workdir / f"csms-{http_port}.log"
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "csms", *args, "--http-port", str(http_port), "--ocpp-port", str(ocpp_port),
           "--ocpp-host", "127.0.0.1"]
    with log_path.open("w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT, text=True)
    return CsmsProcess(proc=proc, http_port=http_port, ocpp_port=ocpp_port, log_path=log_path)
