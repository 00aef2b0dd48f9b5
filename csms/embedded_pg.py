"""A private PostgreSQL+TimescaleDB cluster in a data directory, for ``csms run``.

First use runs ``initdb`` (superuser ``csms`` with a generated password, SCRAM
authentication, ``shared_preload_libraries=timescaledb``), later uses start the same
cluster again. PostgreSQL refuses to run as root, so when started as root the
cluster files belong to an unprivileged system user (``postgres`` or ``nobody``)
and the server runs as that user.

State kept next to the cluster in ``embedded.json`` (mode 0600): user, password,
port, database. ``csms db-url`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

from csms.errors import EmbeddedDatabaseError

logger = logging.getLogger(__name__)

DB_NAME = "csms"
DB_USER = "csms"
_UNPRIVILEGED_USERS = ("postgres", "nobody")


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


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
                 extra_conf: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.absolute()
        self.pgdata = self.data_dir / "pg"
        self.socket_dir = self.data_dir / "pg-run"
        self.state_file = self.data_dir / "embedded.json"
        self.log_file = self.socket_dir / "postgres.log"
        self._requested_port = port
        self._start_timeout_s = start_timeout_s
        self._extra_conf = extra_conf or {}
        self._bin = find_pg_bin_dir()
        self._run_as = self._pick_user()
        self.started_here = False

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

    def start(self) -> EmbeddedState:
        """Start the cluster (initialising it first if needed); return its state."""
        state = self.initialise()
        if self.is_running():
            logger.info("embedded PostgreSQL in %s is already running; using it", self.pgdata)
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
        self.started_here = True
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
        """Stop the cluster if this object started it (fast shutdown: aborts open transactions)."""
        if not self.started_here:
            return
        self._run("pg_ctl", "stop", "-D", str(self.pgdata), "-m", "fast", "-w", "-t", str(int(timeout_s)),
                  check=False, timeout=timeout_s + 10)
        self.started_here = False
