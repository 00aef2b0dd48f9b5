"""The harness's free ports come from below the kernel's ephemeral range, so no client connection
(whose local port the kernel picks from that range) can take one between choice and bind."""

from __future__ import annotations

import socket

from csms.run import ports


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    end = min(ports.END_PORT, ports._ephemeral_start())
    got = [ports.free_port() for _ in range(50)]
    assert len(set(got)) == len(got)  # one process never hands out a port twice in a row
    assert all(ports.FIRST_PORT <= p < end for p in got), got
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", got[-1]))


def test_a_held_port_is_skipped() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", ports.free_port()))
        held.listen()
        taken = held.getsockname()[1]
        span = min(ports.END_PORT, ports._ephemeral_start()) - ports.FIRST_PORT
        assert taken not in {ports.free_port() for _ in range(span)}
