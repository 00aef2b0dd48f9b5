"""Session fixtures: one real PostgreSQL+TimescaleDB and one real Mosquitto per test run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from schemas.migrate import apply_migrations
from tests.harness import MosquittoService, PostgresService, start_mosquitto, start_postgres


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresService]:
    service = start_postgres()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[MosquittoService]:
    service = start_mosquitto()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture
def empty_db_url(postgres: PostgresService) -> Iterator[str]:
    """A fresh, empty database (no migrations applied), dropped afterwards."""
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture
async def db_url(empty_db_url: str) -> str:
    """A fresh database with every migration applied."""
    conn = await asyncpg.connect(empty_db_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    return empty_db_url


@pytest.fixture
async def db(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(db_url)
    try:
        yield conn
    finally:
        await conn.close()
