"""``csms run|serve --workers N``: a supervisor and N gateway worker processes sharing the ports.

One Python process is one core and at most one open-files limit of sockets (20,000 here), so a host
runs several gateway processes: each is an ordinary ``csms serve`` (its own node id
``<node-id>-w<i>``, outbox, MQTT session and lease), and all of them bind the OCPP port and the
operator HTTP port with SO_REUSEPORT, the kernel spreading new connections over them. Worker ``i``
also serves its own ``/metrics`` and ``/healthz`` on ``metrics_port_base + i``.

The supervisor itself does no event-loop work: it starts what the workers need, spawns them, restarts
a worker that exits (bounded exponential back-off), and on SIGTERM/SIGINT stops everything in order:
the gateways first (each drains its chargers at ``drain_rate_per_s``), then ingest, then the broker,
then the database, each within its share of the shutdown timeout. ``csms run --workers N`` also runs
what ``csms run`` runs in one process: the embedded PostgreSQL (which it owns), an embedded Mosquitto
(``csms.run.embedded_mqtt``) and one ``csms ingest`` process, unless ``--database-url`` /
``--mqtt-url`` name existing ones. Children are in their own process group (a Ctrl-C in the terminal
reaches only the supervisor, which orders the stop) and get SIGTERM if the supervisor dies
(PR_SET_PDEATHSIG), so a killed supervisor leaves no worker behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from csms.common.errors import ConfigurationError
from csms.run.embedded_mqtt import EmbeddedMosquitto, die_with_parent
from csms.run.embedded_pg import EmbeddedPostgres
from csms.run.http_server import reuse_port_socket
from csms.run.workers import (
    FD_RESERVE_PER_WORKER,
    chargers_per_worker,
    describe_exit,
    raise_open_files_limit,
    settings_environment,
    worker_node_id,
)
from schemas.settings import Settings

logger = logging.getLogger(__name__)

# A worker stops in steps (gateway drain, fleet registry, HTTP, metrics HTTP, bus, database pool), each
# bounded by shutdown_timeout_s (csms.run.central); the supervisor allows it that many before it kills it.
WORKER_STOP_STEPS = 6
INGEST_STOP_STEPS = 3
# initdb's max_connections of the embedded cluster (csms.run.embedded_pg).
EMBEDDED_PG_MAX_CONNECTIONS = 100
# Safety net only: child exits and signals wake the supervisor at once (SIGCHLD via the wakeup fd).
_TICK_S = 1.0


@dataclass(eq=False)
class Child:
    """One supervised process and its restart state."""

    name: str
    argv: list[str]
    env: dict[str, str]
    wants_ready: bool   # a worker reports readiness on a pipe; ingest does not
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    ready_fd: int | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    """Run ``settings.workers`` gateway workers (and, for ``csms run``, what they need) until stopped."""

    def __init__(self, settings: Settings, *, command: str) -> None:
        self.settings = settings
        self.command = command
        self.pg: EmbeddedPostgres | None = None
        self.mqtt: EmbeddedMosquitto | None = None
        self.workers: list[Child] = []
        self.ingest: Child | None = None
        self._reserved: list[Any] = []
        self._selector = selectors.DefaultSelector()
        self._stop_signals = 0
        self._wakeup_r, self._wakeup_w = os.pipe()
        os.set_blocking(self._wakeup_r, False)
        os.set_blocking(self._wakeup_w, False)
        self._selector.register(self._wakeup_r, selectors.EVENT_READ, None)

    # -- signals ----------------------------------------------------------------------------

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_signals += 1
        if self._stop_signals > 1:
            logger.warning("second stop signal: killing what is still running")

    def _install_signals(self) -> dict[signal.Signals, Any]:
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        previous: dict[signal.Signals, Any] = {sig: signal.getsignal(sig) for sig in handled}
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake the selector
        return previous

    # -- the whole life ---------------------------------------------------------------------

    def run(self) -> int:
        """Start, supervise until SIGTERM/SIGINT, stop in order; the exit status."""
        previous = self._install_signals()
        status = 0
        try:
            self._start()
            if self._wait_initial_ready():
                self._supervise()
        except (ConfigurationError, OSError, ValueError) as exc:
            logger.error("%s", exc)
            status = 1
        except Exception as exc:
            logger.exception("supervisor failed: %s", exc)
            status = 1
        finally:
            self._stop_all()
            signal.set_wakeup_fd(-1)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._selector.close()
            os.close(self._wakeup_r)
            os.close(self._wakeup_w)
        return status

    def _start(self) -> None:
        s = self.settings
        if self.command == "serve" and not (s.database_url and s.mqtt_url):
            raise ConfigurationError("csms serve --workers N needs --database-url and --mqtt-url: the workers "
                                     "share the database and reach each other's chargers over the broker")
        limit = raise_open_files_limit()
        per_worker = chargers_per_worker(limit, s)
        logger.info("open-files limit %d per process: each worker holds up to about %d chargers (%d for the "
                    "database pool, %d for the rest), %d workers about %d", limit, per_worker, s.db_pool_max,
                    FD_RESERVE_PER_WORKER, s.workers, per_worker * s.workers)
        # The shared ports, bound here (never listening) with SO_REUSEPORT: port 0 becomes one port all
        # workers use, a port held by another program fails here, and restarts find the port still ours.
        ports = {}
        for name, host in (("ocpp_port", s.ocpp_host), ("http_port", s.http_host)):
            sock = reuse_port_socket(host, getattr(s, name))
            self._reserved.append(sock)
            ports[name] = int(sock.getsockname()[1])
        database_url, mqtt_url = s.database_url, s.mqtt_url
        if self.command == "run":
            if database_url is None:
                self.pg = EmbeddedPostgres(data_dir=s.data_dir, port=s.embedded_pg_port,
                                           start_timeout_s=s.embedded_pg_start_timeout_s, role="csms run")
                database_url = self.pg.start(exclusive=True).url()
            if mqtt_url is None:
                self.mqtt = EmbeddedMosquitto(data_dir=s.data_dir, port=s.embedded_mqtt_port,
                                              start_timeout_s=s.embedded_mqtt_start_timeout_s,
                                              max_inflight_messages=max(100, s.ingest_max_in_flight_messages))
                mqtt_url = self.mqtt.start()
            self._check_database_connections()
        from csms.run.central import load_or_create_api_token

        load_or_create_api_token(s)  # one token in the data directory before the workers read it
        common = {"database_url": database_url, "mqtt_url": mqtt_url, "workers": 1,
                  "data_dir": s.data_dir.absolute()}
        python = [sys.executable, "-m", "csms"]
        if self.command == "run":
            self.ingest = Child("ingest", [*python, "ingest"], settings_environment(
                s, **common, node_id=f"{s.node_id}-ingest", http_port=s.metrics_port_base + s.workers),
                wants_ready=False)
            self._spawn(self.ingest)
        for i in range(s.workers):
            child = Child(f"w{i}", [*python, "serve", "--worker-index", str(i), "--worker-node", s.node_id],
                          settings_environment(s, **common, **ports, node_id=worker_node_id(s.node_id, i)),
                          wants_ready=True)
            self.workers.append(child)
            self._spawn(child)
        logger.info("started %d workers on OCPP port %d and HTTP port %d (metrics on %d…%d)", s.workers,
                    ports["ocpp_port"], ports["http_port"], s.metrics_port_base, s.metrics_port_base + s.workers - 1)

    def _check_database_connections(self) -> None:
        s = self.settings
        needed = s.workers * s.db_pool_max + s.ingest_db_pool_max + 2
        if needed > EMBEDDED_PG_MAX_CONNECTIONS:
            logger.warning("%d workers with --db-pool-max %d and ingest may open %d database connections; the "
                           "embedded PostgreSQL allows %d: lower --db-pool-max", s.workers, s.db_pool_max, needed,
                           EMBEDDED_PG_MAX_CONNECTIONS)

    # -- children ---------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        argv, write_fd = list(child.argv), None
        pass_fds: tuple[int, ...] = ()
        if child.wants_ready:
            read_fd, write_fd = os.pipe()
            argv += ["--ready-fd", str(write_fd)]
            pass_fds = (write_fd,)
        parent = os.getpid()
        try:
            child.proc = subprocess.Popen(argv, env=child.env, stdin=subprocess.DEVNULL, pass_fds=pass_fds,
                                          process_group=0, preexec_fn=lambda: die_with_parent(parent))
        finally:
            if write_fd is not None:
                os.close(write_fd)
        if write_fd is not None:
            os.set_blocking(read_fd, False)
            child.ready_fd = read_fd
            self._selector.register(read_fd, selectors.EVENT_READ, child)
        child.ready, child.started_at, child.restart_at = False, time.monotonic(), None
        logger.info("%s started (pid %d)", child.name, child.proc.pid)

    def _close_ready_fd(self, child: Child) -> None:
        if child.ready_fd is not None:
            self._selector.unregister(child.ready_fd)
            os.close(child.ready_fd)
            child.ready_fd = None

    def _wait(self, timeout_s: float) -> None:
        """Sleep until a signal, a child's exit or readiness, or ``timeout_s``."""
        for key, _ in self._selector.select(max(0.0, min(timeout_s, _TICK_S))):
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wakeup_r, 512):
                        pass
                continue
            child: Child = key.data
            try:
                data = os.read(key.fd, 64)
            except BlockingIOError:
                continue
            if data:
                if not child.ready:
                    logger.info("%s ready after %.1f s", child.name, time.monotonic() - child.started_at)
                child.ready = True
            else:
                self._close_ready_fd(child)  # the worker closed it (it is exiting)

    def _children(self) -> list[Child]:
        return [*self.workers, *([self.ingest] if self.ingest else [])]

    def _wait_initial_ready(self) -> bool:
        """All workers ready: True; a stop signal first: False; a worker that dies first is fatal (it
        would fail the same way again: a port in use, a wrong database URL)."""
        deadline = time.monotonic() + self.settings.worker_start_timeout_s
        while not all(w.ready for w in self.workers):
            if self._stop_signals:
                return False
            for child in self.workers:
                if child.proc is not None and child.proc.poll() is not None:
                    raise ConfigurationError(f"worker {child.name} {describe_exit(child.proc.returncode)} before "
                                             "it was ready (its log is above)")
            if time.monotonic() >= deadline:
                raise ConfigurationError(f"workers not ready within {self.settings.worker_start_timeout_s:.0f} s")
            self._wait(deadline - time.monotonic())
        logger.info("all %d workers ready", len(self.workers))
        return True

    def _supervise(self) -> None:
        s = self.settings
        while not self._stop_signals:
            now = time.monotonic()
            next_due = now + _TICK_S
            for child in self._children():
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        self._spawn(child)
                    else:
                        next_due = min(next_due, child.restart_at)
                elif child.proc is not None and child.proc.poll() is not None:
                    self._schedule_restart(child, now)
                    next_due = now
                elif child.wants_ready and not child.ready:
                    if now - child.started_at > s.worker_start_timeout_s:
                        logger.warning("%s not ready within %.0f s; killing it", child.name, s.worker_start_timeout_s)
                        child.proc.kill()  # type: ignore[union-attr]
                    next_due = min(next_due, child.started_at + s.worker_start_timeout_s)
            self._wait(next_due - time.monotonic())

    def _schedule_restart(self, child: Child, now: float) -> None:
        s = self.settings
        assert child.proc is not None
        self._close_ready_fd(child)
        ran_s = now - child.started_at
        if (child.ready or not child.wants_ready) and ran_s >= s.worker_restart_backoff_max_s:
            child.crashes = 0  # it had been running well: this is a new incident, not a crash loop
        child.crashes += 1
        delay = min(s.worker_restart_backoff_max_s, s.worker_restart_backoff_min_s * 2 ** (child.crashes - 1))
        child.restart_at = now + delay
        logger.warning("%s (pid %d) %s after %.1f s; restarting it in %.1f s", child.name, child.proc.pid,
                       describe_exit(child.proc.returncode), ran_s, delay)

    # -- stopping ---------------------------------------------------------------------------

    def _stop_children(self, children: list[Child], timeout_s: float) -> None:
        """SIGTERM, wait up to ``timeout_s`` (a second stop signal cuts it short), then SIGKILL."""
        running = [c for c in children if c.alive]
        for child in running:
            child.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        signals_before = self._stop_signals
        deadline = time.monotonic() + timeout_s
        while any(c.alive for c in running) and time.monotonic() < deadline:
            if self._stop_signals > max(1, signals_before):
                break
            self._wait(deadline - time.monotonic())
        for child in running:
            if child.alive:
                logger.warning("%s did not stop within %.0f s; killing it", child.name, timeout_s)
                child.proc.kill()  # type: ignore[union-attr]
            child.proc.wait()  # type: ignore[union-attr]
            self._close_ready_fd(child)
            if child.proc.returncode:  # type: ignore[union-attr]
                logger.info("%s %s", child.name, describe_exit(child.proc.returncode))  # type: ignore[union-attr]

    def _stop_all(self) -> None:
        t = self.settings.shutdown_timeout_s
        parts = ["workers", *(["ingest"] if self.ingest else []), *(["broker"] if self.mqtt else []),
                 *(["database"] if self.pg else [])]
        logger.info("stopping: %s (workers within %.0f s)", ", ".join(parts), t * WORKER_STOP_STEPS)
        for child in self._children():
            child.restart_at = None
        steps: list[tuple[str, Any]] = [
            ("workers", lambda: self._stop_children(self.workers, t * WORKER_STOP_STEPS)),
            ("ingest", lambda: self._stop_children([self.ingest] if self.ingest else [], t * INGEST_STOP_STEPS)),
            ("broker", lambda: self.mqtt.stop(timeout_s=t) if self.mqtt else None),
            ("database", lambda: self.pg.stop(timeout_s=t + 30) if self.pg else None),
        ]
        for name, step in steps:
            try:
                step()
            except Exception:
                logger.exception("stopping the %s failed", name)
        for sock in self._reserved:
            sock.close()
        logger.info("stopped")

