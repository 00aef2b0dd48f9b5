"""schemathesis against the running system's /openapi.json: no 5xx, answers match the schema."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import make_shared_tmpdir
from tests.processes import start_csms

pytestmark = pytest.mark.integration

TOKEN = "fuzz-operator-token-0123456789"


async def test_schemathesis_finds_no_server_errors_and_no_schema_violations() -> None:
    workdir = make_shared_tmpdir("csms-fuzz-")
    proc = start_csms(["run"], workdir=workdir, env={"CSMS_API_TOKEN": TOKEN})
    try:
        await asyncio.to_thread(proc.wait_healthy)
        cli = Path(sys.executable).parent / "schemathesis"
        result = await asyncio.to_thread(
            subprocess.run,
            [str(cli), "run", f"{proc.http}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
             "--max-examples", "25", "--seed", "20261125", "--checks",
             "not_a_server_error,response_schema_conformance", "--no-color"],
            capture_output=True, text=True, timeout=240, check=False)
        assert result.returncode == 0, result.stdout[-6000:] + proc.log()[-3000:]
        assert " passed" in result.stdout
    finally:
        await asyncio.to_thread(proc.stop)
        shutil.rmtree(workdir, ignore_errors=True)
