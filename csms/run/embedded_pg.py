"""A private PostgreSQL+TimescaleDB cluster in a data directory, for ``csms run``.

First use runs ``initdb`` (superuser ``csms`` with a generated password, SCRAM
authentication, ``shared_preload_libraries=timescaledb``), later uses start the same
cluster again. PostgreSQL refuses to run as root, so when started as root the
cluster files belong to an unprivileged system user (``postgres`` or ``nobody``)
and the server runs as that user.

State kept next to the cluster in ``embedded.json`` (mode 0600): user, password,
port, database. ``csms db-url`` reads it.

Ownership: the process that runs the cluster owns it and stops it when it stops, whether
it started the server or found it still running (left behind by a process that was
killed). It holds an exclusive ``flock`` on ``embedded-owner.lock`` in the data directory
for as long as it owns the cluster; the file says who (pid, role, postmaster pid). The
kernel drops the lock when the owner dies, however it dies, so a lock is never stale, and
PostgreSQL (a child of pg_ctl) never inherits it. While an owner lives, another process
either refuses (``csms run``: two of them must not both own one cluster) or uses the
running cluster without owning it (a registry command next to ``csms run``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from csms.common.errors import EmbeddedDatabaseError
from csms.run.ports import free_port

logger = logging.getLogger(__name__)

DB_NAME = "csms"
DB_USER = "csms"
OWNER_FILE = "embedded-owner.lock"
_UNPRIVILEGED_USERS = ("postgres", "nobody")
_ATTACH_POLL_S = 0.25  # how often a non-owner looks whether the owner's server is up yet


def find_pg_bin_dir() -> Path:
    """Directory of initdb/pg_ctl/postgres: the newest /usr/lib/postgresql/N/bin, else PATH."""
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        majors = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        for major in reversed(majors):
            if (major / "bin" / "pg_ctl").exists():
                return major / "bin"
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).resolve().parent
    raise EmbeddedDatabaseError("PostgreSQL binaries not found: run deploy/setup.sh")


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Like PostgreSQL itself: a port in TIME_WAIT from our own last run is free to use.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@dataclass(frozen=True, slots=True)
class EmbeddedState:
    user: str
    password: str
    port: int
    database: str

    def url(self, host: str = "127.0.0.1") -> str:
        return f"postgresql://{self.user}:{self.password}@{host}:{self.port}/{self.database}"


class EmbeddedPostgres:
    """Own one PostgreSQL cluster under ``data_dir``; start it, stop it, give its URL."""

    def __init__(self, *, data_dir: Path, port: int = 0, start_timeout_s: float = 60.0,
                 extra_conf: dict[str, str] | None = None, role: str = "csms") -> None:
        self.data_dir = data_dir.absolute()
        self.pgdata = self.data_dir / "pg"
        self.socket_dir = self.data_dir / "pg-run"
        self.state_file = self.data_dir / "embedded.json"
        self.owner_file = self.data_dir / OWNER_FILE
        self.log_file = self.socket_dir / "postgres.log"
        self._requested_port = port
        self._start_timeout_s = start_timeout_s
        self._extra_conf = extra_conf or {}
        self._role = role
        self._bin = find_pg_bin_dir()
        self._run_as = self._pick_user()
        self._owner_fd: int | None = None

    @property
    def owned(self) -> bool:
        """This process owns the cluster: it holds the owner lock and stops the server in stop()."""
        return self._owner_fd is not None

    # -- ownership ------------------------------------------------------------------------

    def _take_ownership(self) -> bool:
        """The owner lock, if no live process holds it (non-blocking)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.owner_file, os.O_RDWR | os.O_CREAT, 0o600)  # not inherited by children (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._owner_fd = fd
        self._write_owner()
        return True

    def _write_owner(self, postmaster_pid: int | None = None) -> None:
        if self._owner_fd is None:
            return
        record = {"pid": os.getpid(), "role": self._role, "since": datetime.now(UTC).isoformat(timespec="seconds"),
                  "postmaster_pid": postmaster_pid}
        data = json.dumps(record).encode()
        os.ftruncate(self._owner_fd, 0)
        os.pwrite(self._owner_fd, data, 0)

    def _release_ownership(self) -> None:
        fd, self._owner_fd = self._owner_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # nobody owns it now
            os.close(fd)  # closing the descriptor drops the flock

    def owner(self) -> dict[str, Any] | None:
        """Who owns the cluster, as its owner file says (None when nobody has said)."""
        try:
            record = json.loads(self.owner_file.read_text("utf-8") or "null")
        except (FileNotFoundError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _owner_text(self) -> str:
        record = self.owner() or {}
        return f"{record.get('role', 'another process')} (pid {record.get('pid', '?')})"

    def postmaster_pid(self) -> int | None:
        """The server's pid from postmaster.pid (first line), None when there is none."""
        try:
            first = (self.pgdata / "postmaster.pid").read_text("utf-8").split("\n", 1)[0].strip()
        except (FileNotFoundError, PermissionError):
            return None
        return int(first) if first.isdigit() else None

    def _running_port(self) -> int | None:
        # postmaster.pid line 4 is the port the server listens on (PostgreSQL docs, "postmaster.pid").
        with contextlib.suppress(FileNotFoundError, PermissionError, IndexError, ValueError):
            return int((self.pgdata / "postmaster.pid").read_text("utf-8").split("\n")[3])
        return None

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _pick_user() -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        for name in _UNPRIVILEGED_USERS:
            with contextlib.suppress(KeyError):
                return pwd.getpwnam(name)
        raise EmbeddedDatabaseError("running as root but no unprivileged user (postgres, nobody) exists")

    def _run(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        cmd = [str(self._bin / args[0]), *args[1:]]
        kwargs: dict[str, object] = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,  # type: ignore[call-overload]
                              check=False, cwd="/", **kwargs)
        if check and proc.returncode != 0:
            raise EmbeddedDatabaseError(
                f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc  # type: ignore[no-any-return]

    def _chown(self, path: Path) -> None:
        if self._run_as is not None:
            os.chown(path, self._run_as.pw_uid, self._run_as.pw_gid)

    def _check_reachable(self) -> None:
        """The server user must be able to reach the data directory (e.g. not under /root)."""
        if self._run_as is None:
            return
        probe = subprocess.run(["test", "-x", str(self.data_dir)], user=self._run_as.pw_uid, check=False)
        if probe.returncode != 0:
            raise EmbeddedDatabaseError(
                f"PostgreSQL runs as user {self._run_as.pw_name!r}, which cannot reach {self.data_dir}; "
                "choose a --data-dir whose parent directories that user may enter"
            )

    def read_state(self) -> EmbeddedState | None:
        return self.read_state_of(self.data_dir)

    @staticmethod
    def read_state_of(data_dir: Path) -> EmbeddedState | None:
        """The saved connection state of the cluster in ``data_dir``, without touching the cluster."""
        try:
            raw = json.loads((data_dir / "embedded.json").read_text("utf-8"))
        except FileNotFoundError:
            return None
        return EmbeddedState(user=raw["user"], password=raw["password"], port=int(raw["port"]),
                             database=raw["database"])

    def _write_state(self, state: EmbeddedState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"user": state.user, "password": state.password, "port": state.port,
                       "database": state.database}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_file)

    # -- lifecycle ------------------------------------------------------------------------

    def initialise(self) -> EmbeddedState:
        """initdb on first use; return the connection state (port chosen but not started)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o755)  # noqa: S103 - the server user must enter it; secrets inside are 0600
        self._check_reachable()
        state = self.read_state()
        if state is None or not (self.pgdata / "PG_VERSION").exists():
            state = self._initdb()
        if self._requested_port and state.port != self._requested_port:
            state = EmbeddedState(state.user, state.password, self._requested_port, state.database)
            self._write_state(state)
        return state

    def _initdb(self) -> EmbeddedState:
        logger.info("initialising a private PostgreSQL cluster in %s", self.pgdata)
        if self.pgdata.exists():
            shutil.rmtree(self.pgdata)
        self.pgdata.mkdir(mode=0o700)
        self._chown(self.pgdata)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        password = secrets.token_urlsafe(24)
        pwfile = self.socket_dir / "initdb.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        self._chown(pwfile)
        try:
            self._run("initdb", "-D", str(self.pgdata), "-U", DB_USER, f"--pwfile={pwfile}",
                      "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                      "-E", "UTF8", "--locale=C.UTF-8")
        finally:
            pwfile.unlink(missing_ok=True)
        conf = {
            "shared_preload_libraries": "'timescaledb'",
            "timescaledb.telemetry_level": "off",
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "100",
            "shared_buffers": "128MB",
            # Durability is the point of this system: keep fsync and synchronous_commit on.
            "fsync": "on",
            "synchronous_commit": "on",
            "log_min_messages": "warning",
            **self._extra_conf,
        }
        with (self.pgdata / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write("\n# added by csms embedded start\n")
            for key, value in conf.items():
                fh.write(f"{key} = {value}\n")
        port = self._requested_port or free_port()
        state = EmbeddedState(user=DB_USER, password=password, port=port, database=DB_NAME)
        self._write_state(state)
        return state

    def is_running(self) -> bool:
        if not (self.pgdata / "postmaster.pid").exists():
            return False
        return self._run("pg_ctl", "status", "-D", str(self.pgdata), check=False).returncode == 0

    def start(self, *, exclusive: bool = False) -> EmbeddedState:
        """Own the cluster and make sure it runs (initialising it first if needed); its state.

        When a live process owns it already: with ``exclusive`` refuse (EmbeddedDatabaseError),
        otherwise use its running server without owning it (stop() leaves it alone).
        """
        if not self.owned and not self._take_ownership():
            if exclusive:
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL in {self.data_dir} belongs to {self._owner_text()}, which is "
                    "running: stop it first, or give this one another --data-dir")
            return self._attach()
        try:
            return self._start_owned()
        except BaseException:
            self._release_ownership()
            raise

    def _attach(self) -> EmbeddedState:
        """Use the running server of the live owner, waiting (bounded) while it starts."""
        deadline = time.monotonic() + self._start_timeout_s
        while True:
            state = self.read_state()
            if state is not None and self.is_running():
                logger.info("embedded PostgreSQL in %s is run by %s; using it", self.pgdata, self._owner_text())
                return state
            if time.monotonic() >= deadline:
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL in {self.data_dir} belongs to {self._owner_text()} but did not "
                    f"come up within {self._start_timeout_s:.0f} s")
            time.sleep(_ATTACH_POLL_S)

    def _start_owned(self) -> EmbeddedState:
        state = self.initialise()
        if self.is_running():
            # Left running by an owner that died (e.g. SIGKILL): it is ours now, and stops with us.
            running_port = self._running_port()
            if running_port is not None and running_port != state.port and self._requested_port:
                logger.info("embedded PostgreSQL left running on port %d; restarting it on port %d",
                            running_port, state.port)
                self._stop_server(self._start_timeout_s)
            else:
                if running_port is not None and running_port != state.port:
                    state = EmbeddedState(state.user, state.password, running_port, state.database)
                    self._write_state(state)
                logger.info("embedded PostgreSQL in %s was left running (postmaster pid %s); this process "
                            "owns it now and stops it when it stops", self.pgdata, self.postmaster_pid())
                self._write_owner(self.postmaster_pid())
                self._ensure_database(state)
                return state
        if _port_in_use(state.port):
            if self._requested_port:
                raise EmbeddedDatabaseError(f"port {state.port} for the embedded PostgreSQL is in use")
            state = EmbeddedState(state.user, state.password, free_port(), state.database)
            self._write_state(state)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown(self.socket_dir)
        logger.info("starting embedded PostgreSQL on 127.0.0.1:%d", state.port)
        self._run("pg_ctl", "start", "-D", str(self.pgdata), "-w", "-t", str(int(self._start_timeout_s)),
                  "-l", str(self.log_file), "-o", f"-p {state.port} -k {self.socket_dir}",
                  timeout=self._start_timeout_s + 10)
        self._write_owner(self.postmaster_pid())
        self._ensure_database(state)
        return state

    def _ensure_database(self, state: EmbeddedState) -> None:
        env_pw = {"PGPASSWORD": state.password}
        check = self._psql(state, "postgres", f"SELECT 1 FROM pg_database WHERE datname = '{state.database}'",
                           env_pw)
        if check.strip() != "1":
            self._psql(state, "postgres", f'CREATE DATABASE "{state.database}"', env_pw)

    def _psql(self, state: EmbeddedState, db: str, sql: str, extra_env: dict[str, str]) -> str:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **extra_env}
        proc = subprocess.run(
            [str(self._bin / "psql"), "-X", "-q", "-t", "-A", "-h", "127.0.0.1", "-p", str(state.port),
             "-U", state.user, "-d", db, "-c", sql],
            capture_output=True, text=True, env=env, timeout=60, check=False,
        )
        if proc.returncode != 0:
            raise EmbeddedDatabaseError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout

    def stop(self, *, timeout_s: float = 30.0) -> None:
        """Stop the cluster if this process owns it, started or adopted (fast shutdown: aborts open
        transactions), then give up ownership. A process that only used it leaves it running."""
        if not self.owned:
            return
        try:
            self._stop_server(timeout_s)
        finally:
            self._release_ownership()

    def _stop_server(self, timeout_s: float) -> None:
        self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(timeout_s)),
                  check=False, timeout=timeout_s + 10)
