"""Helpers shared by the per-version handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from csms.ocpp.context import Context, Reply, clean_json, digest
from csms.ocpp.errors import PropertyConstraintViolation
from schemas.events import LogEvent

Handler = Callable[[Context, dict[str, Any]], Awaitable[Reply]]

INT32_MAX = 2**31 - 1


def iso_utc(moment: datetime) -> str:
    """UTC with 'Z' and at most 3 fractional digits (2.0.1 Part 2 §2.1.4; R35); naive means UTC."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso_utc(datetime.now(UTC))


def int32(value: Any, field: str, *, minimum: int = -(2**31)) -> int:
    """An integer field that must fit a signed 32-bit column (R56, derived: the schema's "integer" sets no
    bound)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise PropertyConstraintViolation(f"{field}: not an integer", {"field": field})
    number = int(value)
    if not minimum <= number <= INT32_MAX:
        raise PropertyConstraintViolation(f"{field}: {number} is out of range", {"field": field})
    return number


def log_event(ctx: Context, action: str, payload: dict[str, Any], time: datetime | None = None) -> LogEvent:
    return LogEvent(charge_point_id=ctx.state.charge_point_id, received_at=ctx.received_at,
                    time=time or ctx.received_at, action=action, payload=clean_json(payload),
                    digest=digest(payload))


def acknowledge(action: str, response: dict[str, Any] | None = None) -> Handler:
    """A handler that stores the message and answers with a fixed response ({} by default)."""
    fixed = response or {}

    async def handler(ctx: Context, payload: dict[str, Any]) -> Reply:
        return Reply(dict(fixed), [log_event(ctx, action, payload)])

    return handler
