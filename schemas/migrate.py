"""Ordered SQL migrations, applied inside one transaction under an advisory lock.

Several processes may start at once (``csms serve`` next to ``csms ingest``, or two
replicas). Each takes the same transaction-scoped advisory lock, so exactly one
applies the pending files; the others wait, then find nothing left to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

logger = logging.getLogger(__name__)

# Arbitrary but fixed 64-bit key: "csms-migrate" hashed, so that it never collides with
# advisory locks taken elsewhere in the same database.
MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"csms-migrate").digest()[:8], "big", signed=True)

_NAME_RE = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, or an applied one was changed afterwards."""


@dataclass(frozen=True, slots=True)
class Migration:
    """One SQL file of ``schemas/migrations``."""

    version: str
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """Read the migration files shipped as package data, in version order."""
    folder = resources.files("schemas") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME_RE.match(entry.name)
        if not match:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file name not of the form NNNN_name.sql: {entry.name}")
            continue
        found.append(Migration(version=match.group(1), name=entry.name, sql=entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions: {versions}")
    return found


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply every pending migration; return the names of those applied by this call."""
    migrations = load_migrations()
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    text PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        done = {r["version"]: r for r in rows}
        for migration in migrations:
            row = done.get(migration.version)
            if row is not None:
                if row["checksum"] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.name} was changed after it was applied "
                        f"(recorded {row['checksum'][:12]}, file {migration.checksum[:12]}); "
                        "add a new migration instead of editing an applied one"
                    )
                continue
            logger.info("applying migration %s", migration.name)
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.name)
    return applied_now
