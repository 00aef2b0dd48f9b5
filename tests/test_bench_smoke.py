"""Small runs of the benchmarks so they keep working; no timing is asserted (benchmarks
report figures, tests do not judge wall-clock speed on a shared machine)."""

from __future__ import annotations

import asyncio

import pytest

from csms.bench import ocpp_throughput

pytestmark = pytest.mark.integration


async def test_ocpp_benchmark_runs_and_every_answered_sample_is_stored() -> None:
    result = await asyncio.to_thread(ocpp_throughput.run, connections=4, seconds=1.0)
    servers = [f["server"] for f in result["figures"]]
    assert servers == ["echo", "ocpp-lib", "csms", "csms-mqtt"]
    assert all(f["messages"] > 0 and f["errors"] == 0 for f in result["figures"])
    assert result["csms_samples_stored"] == result["csms_samples_expected"]
    assert set(result["ratio_to_echo_per_core"]) == {"echo", "ocpp-lib", "csms", "csms-mqtt"}
    assert "| csms |" in ocpp_throughput.render(result)


async def test_ingest_benchmark_runs() -> None:
    from ingest import bench

    result = await bench.run(5000)
    assert set(result["rows_per_s"]) == {"raw_copy", "writer", "bus_to_rows"}
    assert all(v > 0 for v in result["rows_per_s"].values())
    assert "raw COPY" in bench.render(result)
