"""The throughput benchmark's round arithmetic (pure: no servers): medians and per-round ratio ranges."""

from __future__ import annotations

from dataclasses import asdict

from csms.bench.ocpp_throughput import Figure, medians, ratio_ranges, render


def _figure(server: str, per_cpu_s: float, round_no: int) -> Figure:
    return Figure(server=server, samples=1, messages=int(per_cpu_s), wall_s=1.0, server_cpu_s=1.0,
                  msgs_per_s=per_cpu_s, msgs_per_cpu_s=per_cpu_s, p50_ms=1.0, p99_ms=2.0, errors=0,
                  total_ok=int(per_cpu_s), round=round_no)


# Three interleaved rounds; the machine got busier in round 1 (every server slower).
ROUNDS = [_figure("echo", 20_000, 0), _figure("csms", 8_000, 0), _figure("echo-uvloop", 30_000, 0),
          _figure("csms-uvloop", 9_000, 0),
          _figure("echo", 10_000, 1), _figure("csms", 5_000, 1), _figure("echo-uvloop", 15_000, 1),
          _figure("csms-uvloop", 6_000, 1),
          _figure("echo", 19_000, 2), _figure("csms", 7_000, 2), _figure("echo-uvloop", 29_000, 2),
          _figure("csms-uvloop", 10_000, 2)]


def test_each_server_is_its_median_round_in_first_seen_order() -> None:
    picked = medians(ROUNDS)
    assert [(f.server, f.msgs_per_cpu_s, f.round) for f in picked] == [
        ("echo", 19_000, 2), ("csms", 7_000, 2), ("echo-uvloop", 29_000, 2), ("csms-uvloop", 9_000, 0)]


def test_an_even_number_of_rounds_takes_the_lower_middle() -> None:
    picked = medians([_figure("csms", 5, 0), _figure("csms", 9, 1), _figure("csms", 7, 2), _figure("csms", 8, 3)])
    assert [f.msgs_per_cpu_s for f in picked] == [7]


def test_each_rounds_ratio_is_against_the_echo_of_the_same_round_and_loop() -> None:
    ranges = ratio_ranges(ROUNDS)
    # csms: 8000/20000 = 0.4, 5000/10000 = 0.5, 7000/19000 = 0.368
    assert ranges["csms"] == (0.368, 0.5)
    # on uvloop against the uvloop echo: 0.3, 0.4, 0.345
    assert ranges["csms-uvloop"] == (0.3, 0.4)
    assert set(ranges) == {"csms", "csms-uvloop"}   # an echo's ratio to itself is 1 by definition


def test_render_shows_the_range_when_there_are_rounds() -> None:
    figures = medians(ROUNDS)
    result = {"connections": 50, "seconds": 8.0, "rounds": 3,
              "variants": [{"samples": 1, "payload": "p", "rounds": 3, "figures": [asdict(f) for f in figures],
                            "ratio_to_echo_per_core": {"csms": 0.368, "echo": 1.0},
                            "ratio_range_over_rounds": {"csms": [0.368, 0.5]}}]}
    text = render(result)
    assert "3 interleaved rounds" in text
    assert "| 1 sample | csms | 7000 | 1.0 | 100% | 7000 | 0.368 | 0.368–0.5 | 143 |" in text
    assert "| 1 sample | echo | 19000 | 1.0 | 100% | 19000 | 1.0 | - |" in text
