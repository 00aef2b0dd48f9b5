"""Migrations: applied once, recorded, safe when several processes start at once."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from schemas.migrate import MigrationError, apply_migrations, load_migrations

pytestmark = pytest.mark.integration


def test_migration_files_are_ordered_and_named() -> None:
    migrations = load_migrations()
    assert migrations, "no migrations shipped as package data"
    versions = [m.version for m in migrations]
    assert versions == sorted(versions)
    assert migrations[0].name == "0001_init.sql"


async def test_apply_creates_hypertables_and_is_idempotent(empty_db_url: str) -> None:
    conn = await asyncpg.connect(empty_db_url)
    try:
        first = await apply_migrations(conn)
        second = await apply_migrations(conn)
        assert first == [m.name for m in load_migrations()]
        assert second == []
        hypertables = {r["hypertable_name"] for r in await conn.fetch(
            "SELECT hypertable_name FROM timescaledb_information.hypertables")}
        assert {"meter_samples", "connector_status", "connection_events"} <= hypertables
        recorded = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert recorded == len(load_migrations())
    finally:
        await conn.close()


async def test_a_changed_applied_migration_is_refused(db_url: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = '0001'")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(conn)
    finally:
        await conn.close()


async def test_concurrent_migrate_processes_apply_each_migration_once(empty_db_url: str) -> None:
    env = {**os.environ, "CSMS_DATABASE_URL": empty_db_url}
    cmd = [sys.executable, "-m", "csms", "migrate"]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    outputs = [await asyncio.to_thread(p.communicate, timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    applied_lines = [out for out, _ in outputs if "0001_init.sql" in out]
    assert len(applied_lines) == 1, outputs  # exactly one process applied, the others found it done
    conn = await asyncpg.connect(empty_db_url)
    try:
        rows = await conn.fetch("SELECT version, count(*) AS n FROM schema_migrations GROUP BY version")
        assert all(r["n"] == 1 for r in rows)
        assert len(rows) == len(load_migrations())
    finally:
        await conn.close()
