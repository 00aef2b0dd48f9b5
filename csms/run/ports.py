"""Free loopback ports for the embedded services, the benchmarks and the test harness.

A port found by binding port 0 comes from the kernel's ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768–60999 on Linux), the same range every outgoing
connection takes its local port from. Between "found free" and "bound by the child process" any
client socket (to PostgreSQL, to Mosquitto, to a charger under test) may take it: the ingest role
then died with EADDRINUSE in a fault test. Ports are therefore handed out below the ephemeral range,
from a per-process counter so one process never hands out the same port twice, and each is checked
by a bind first. The benchmarks' consecutive worker ports (``csms.bench.workers``) start at 21000;
this range stays below that.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

FIRST_PORT = 10_000
END_PORT = 21_000  # exclusive; the benchmarks' worker port blocks start here

# Processes started at the same moment (pytest and a benchmark) begin at different places.
_next = itertools.count(os.getpid() * 37 % (END_PORT - FIRST_PORT))


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def bindable(host: str, port: int) -> bool:
    """Nothing holds ``port`` on ``host`` now (a plain bind succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing holds now and no client connection will be given."""
    end = min(END_PORT, _ephemeral_start())
    span = end - FIRST_PORT
    if span > 0:
        for _ in range(span):
            port = FIRST_PORT + next(_next) % span
            if bindable(host, port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below: the kernel's choice
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
