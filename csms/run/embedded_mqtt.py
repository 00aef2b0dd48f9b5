"""A private Mosquitto for ``csms run --workers N``: the bus of the workers and their command fabric.

Like the embedded PostgreSQL, its files live in the data directory (``<data-dir>/mqtt/``: the
configuration written on every start, persistence, log, password file, ``mqtt.json`` with port and
password, mode 0600), it listens on 127.0.0.1 only and asks for a generated password, its port is
picked on first use and then kept, and the process that starts it owns it: the owner stops it, and it
dies with its owner (PR_SET_PDEATHSIG), so a ``csms run`` that was killed leaves no broker behind.
Persistence is on so that a broker restart keeps the queue of ingest's persistent session; the
durability point is still each worker's outbox, because Mosquitto only snapshots (a PUBACK is not on
disk; /work/shared/reference/performance-facts.md §3.7).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from csms.common.errors import ConfigurationError
from csms.run.ports import free_port

logger = logging.getLogger(__name__)

MQTT_USER = "csms"
_POLL_S = 0.05
# Mosquitto 2.0 password files: PBKDF2-SHA512, its own default of 101 iterations ("$7$", as
# mosquitto_passwd writes them); the password is 32 random bytes, so stretching adds nothing.
_PW_ITERATIONS = 101
_PR_SET_PDEATHSIG = 1


def mosquitto_binary() -> str:
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if found is None:
        raise ConfigurationError("mosquitto not installed: run deploy/setup.sh")
    return found


def _find_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: children then outlive a killed owner
        return None


# Looked up before any fork: a child must not load libraries between fork and exec.
_PRCTL = _find_prctl()


def die_with_parent(parent_pid: int) -> None:
    """In a child between fork and exec: SIGTERM when the parent dies (prctl(2) PR_SET_PDEATHSIG)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def _password_line(user: str, password: str) -> str:
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PW_ITERATIONS, 64)
    return f"{user}:$7${_PW_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class EmbeddedMosquitto:
    """Own one Mosquitto under ``data_dir/mqtt``: start it, stop it, give its URL."""

    def __init__(self, *, data_dir: Path, port: int = 0, start_timeout_s: float = 10.0,
                 max_inflight_messages: int = 1000) -> None:
        self.dir = data_dir.absolute() / "mqtt"
        self.conf_file = self.dir / "mosquitto.conf"
        self.state_file = self.dir / "mqtt.json"
        self.pid_file = self.dir / "mosquitto.pid"
        self.log_file = self.dir / "mosquitto.log"
        self._requested_port = port
        self._start_timeout_s = start_timeout_s
        self._max_inflight = max_inflight_messages
        self._proc: subprocess.Popen[bytes] | None = None

    def _state(self) -> tuple[int, str]:
        """Port and password kept from the last start, or new ones (written with mode 0600)."""
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            raw = json.loads(self.state_file.read_text("utf-8"))
            port, password = int(raw["port"]), str(raw["password"])
            if self._requested_port and port != self._requested_port:
                port = self._requested_port
            elif not self._requested_port and not _port_free(port):
                port = free_port()  # someone else took it meanwhile: pick another, keep that one
            self._write_state(port, password)
            return port, password
        port, password = self._requested_port or free_port(), secrets.token_urlsafe(32)
        self._write_state(port, password)
        return port, password

    def _write_state(self, port: int, password: str) -> None:
        self._write_private(self.state_file, json.dumps({"port": port, "user": MQTT_USER, "password": password}))

    def _write_private(self, path: Path, text: str) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)

    def _config(self, port: int) -> str:
        # Each line as deploy/mosquitto/mosquitto.conf explains it; here loopback only, with a password.
        return "\n".join([
            "# written by csms run on every start; edits are overwritten",
            f"listener {port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {self.dir}/passwd",
            "persistence true",
            f"persistence_location {self.dir}/",
            "autosave_interval 60",
            "max_queued_messages 0",
            "max_queued_bytes 268435456",
            f"max_inflight_messages {self._max_inflight}",
            "set_tcp_nodelay true",
            "persistent_client_expiration 7d",
            f"pid_file {self.pid_file}",
            f"log_dest file {self.log_file}",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
        ])

    def _stop_leftover(self) -> None:
        """A broker of this directory still running (its owner died without taking it along): stop it."""
        try:
            pid = int(self.pid_file.read_text("utf-8").strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return
        if str(self.conf_file).encode() not in cmdline:
            return  # the pid now belongs to another program
        logger.info("stopping the embedded Mosquitto (pid %d) left running in %s", pid, self.dir)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self._start_timeout_s
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(_POLL_S)

    def start(self) -> str:
        """Start the broker (writing its configuration first); its URL, password included."""
        binary = mosquitto_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._stop_leftover()
        port, password = self._state()
        self._write_private(self.dir / "passwd", _password_line(MQTT_USER, password))
        self.conf_file.write_text(self._config(port), "utf-8")
        self.log_file.touch()
        identity: dict[str, Any] = {}
        if os.geteuid() == 0:
            # Not as root. Mosquitto would drop to its own user itself, but a change of user clears
            # PR_SET_PDEATHSIG (prctl(2)); so the child takes that user before exec, and owns its files.
            account = next((a for a in map(_account, ("mosquitto", "nobody")) if a is not None), None)
            if account is None:
                raise ConfigurationError("running as root but no unprivileged user (mosquitto, nobody) exists")
            identity = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            for path in (self.dir, *self.dir.iterdir()):
                os.chown(path, account.pw_uid, account.pw_gid)
        parent = os.getpid()
        with self.log_file.open("ab") as log:
            # subprocess changes the user before it calls preexec_fn, so the death signal survives.
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_file)], stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, process_group=0, preexec_fn=lambda: die_with_parent(parent),
                **identity)
        self._wait_listening(port)
        logger.info("embedded Mosquitto on 127.0.0.1:%d (files in %s)", port, self.dir)
        return f"mqtt://{MQTT_USER}:{password}@127.0.0.1:{port}"

    def _wait_listening(self, port: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self._start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConfigurationError(f"the embedded Mosquitto exited with {self._proc.returncode}: "
                                         f"{self._log_tail()}")
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(_POLL_S)
        self.stop(timeout_s=1.0)
        raise ConfigurationError(f"the embedded Mosquitto did not listen on port {port} within "
                                 f"{self._start_timeout_s:.0f} s: {self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text("utf-8", errors="replace")[-1500:]
        return "(no log)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, *, timeout_s: float) -> None:
        """SIGTERM (Mosquitto writes its persistence file on the way out), SIGKILL after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("the embedded Mosquitto did not stop within %.0f s; killing it", timeout_s)
            proc.kill()
            proc.wait(timeout_s)


def _account(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None
