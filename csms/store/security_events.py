"""SecurityEventNotification in PostgreSQL (schemas/migrations/0013_certificates.sql): stored once per
notification (a retry has the same key), read back newest first in bounded pages."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from csms.ocpp.certificates import SecurityEvent

MAX_PAGE = 1000


def event_key(event: SecurityEvent) -> str:
    """What makes a retry of a notification the same event: its type, its timestamp as sent, its techInfo."""
    text = "\x1f".join((event.type, event.raw_timestamp, event.tech_info or ""))
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:32]


async def store_event(pool: asyncpg.Pool, event: SecurityEvent) -> bool:
    """True when the event was new (not a retry of a stored one)."""
    row_id = await pool.fetchval(
        """INSERT INTO security_events (charge_point_id, event_key, type, occurred_at, tech_info, critical, flags,
                                        ocpp_version, received_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (charge_point_id, event_key) DO NOTHING RETURNING id""",
        event.charge_point_id, event_key(event), event.type, event.occurred_at, event.tech_info, event.critical,
        event.flags, event.version, event.received_at)
    return row_id is not None


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[dict[str, Any]]
    next_before_id: int | None     # pass as before_id for the next (older) page; None: this was the last


async def query_events(pool: asyncpg.Pool, *, charge_point_id: str | None, event_type: str | None,
                       since: datetime | None, critical: bool | None, before_id: int | None,
                       limit: int) -> EventPage:
    """Newest first (by id: the order they were stored), filtered, at most ``limit`` (≤ MAX_PAGE) per page."""
    limit = max(1, min(limit, MAX_PAGE))
    rows = await pool.fetch(
        """SELECT id, charge_point_id, type, occurred_at, tech_info, critical, flags, ocpp_version, received_at
           FROM security_events
           WHERE ($1::text IS NULL OR charge_point_id = $1) AND ($2::text IS NULL OR type = $2)
             AND ($3::timestamptz IS NULL OR occurred_at >= $3) AND ($4::boolean IS NULL OR critical = $4)
             AND ($5::bigint IS NULL OR id < $5)
           ORDER BY id DESC LIMIT $6""",
        charge_point_id, event_type, since, critical, before_id, limit + 1)
    more = len(rows) > limit
    events = [dict(r) for r in rows[:limit]]
    return EventPage(events, events[-1]["id"] if more and events else None)
