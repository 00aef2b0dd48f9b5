"""Real services for the integration tests: PostgreSQL+TimescaleDB and Mosquitto.

Each is started on a free loopback port in a temporary directory and stopped at the
end of the session, unless an environment variable names one to use instead:
``CSMS_TEST_DATABASE_URL`` (a superuser URL; test databases are created next to it)
and ``CSMS_TEST_MQTT_URL``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from csms.run.embedded_pg import EmbeddedPostgres
from csms.run.ports import free_port


def make_shared_tmpdir(prefix: str) -> Path:
    """A temporary directory other local users may enter (PostgreSQL runs unprivileged)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


@dataclass
class PostgresService:
    admin_url: str   # connects to the "postgres" maintenance database
    cluster: EmbeddedPostgres | None
    tmpdir: Path | None

    def stop(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def sql(self, statement: str, database: str = "postgres") -> str:
        url = with_database(self.admin_url, database)
        proc = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", url, "-c", statement],
                              capture_output=True, text=True, timeout=60, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def create_database(self, prefix: str = "t") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        self.sql(f'CREATE DATABASE "{name}"')
        return with_database(self.admin_url, name)

    def drop_database(self, url: str) -> None:
        name = urlsplit(url).path.lstrip("/")
        with contextlib.suppress(RuntimeError):
            self.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_postgres() -> PostgresService:
    given = os.environ.get("CSMS_TEST_DATABASE_URL")
    if given:
        return PostgresService(admin_url=with_database(given, "postgres"), cluster=None, tmpdir=None)
    tmp = make_shared_tmpdir("csms-test-pg-")
    cluster = EmbeddedPostgres(data_dir=tmp / "data", port=free_port(),
                               extra_conf={"fsync": "off", "synchronous_commit": "off",
                                           "full_page_writes": "off", "max_connections": "300"})
    state = cluster.start()
    return PostgresService(admin_url=with_database(state.url(), "postgres"), cluster=cluster, tmpdir=tmp)


MOSQUITTO_CONF = """\
listener {port} 127.0.0.1
allow_anonymous true
persistence true
persistence_location {data}/
autosave_interval 1
max_queued_messages 0
max_inflight_messages 1000
set_tcp_nodelay true
log_dest file {data}/mosquitto.log
"""


@dataclass
class MosquittoService:
    url: str
    port: int
    tmpdir: Path | None
    proc: subprocess.Popen[bytes] | None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def kill(self) -> None:
        """SIGKILL the broker (what it had not snapshotted is lost, as in a real crash)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        assert self.tmpdir is not None, "cannot restart a broker the harness did not start"
        self.proc = _spawn_mosquitto(self.tmpdir, self.port)


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise RuntimeError("mosquitto not installed: run deploy/setup.sh")
    return found


def _spawn_mosquitto(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    conf = tmp / "mosquitto.conf"
    conf.write_text(MOSQUITTO_CONF.format(port=port, data=tmp))
    if os.geteuid() == 0 and _user_exists("mosquitto"):
        # mosquitto drops privileges to the "mosquitto" user when started as root.
        shutil.chown(tmp, user="mosquitto")
    proc = subprocess.Popen([_mosquitto_binary(), "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_port(port, proc)
    return proc


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("mosquitto did not start listening")


def start_mosquitto() -> MosquittoService:
    given = os.environ.get("CSMS_TEST_MQTT_URL")
    if given:
        parts = urlsplit(given)
        return MosquittoService(url=given, port=parts.port or 1883, tmpdir=None, proc=None)
    tmp = make_shared_tmpdir("csms-test-mqtt-")
    port = free_port()
    proc = _spawn_mosquitto(tmp, port)
    return MosquittoService(url=f"mqtt://127.0.0.1:{port}", port=port, tmpdir=tmp, proc=proc)


@contextlib.contextmanager
def running(service: PostgresService | MosquittoService) -> Iterator[None]:
    try:
        yield
    finally:
        service.stop()
