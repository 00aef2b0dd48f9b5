"""What every HTTP router shares: the charge point id path type, the one time format, the
database dependency, CSV responses. Routers hold no SQL: they call ``csms.store``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated

import asyncpg
from fastapi import HTTPException, Path, Response, status
from pydantic import AfterValidator, PlainSerializer, WithJsonSchema

from csms.common.utc import utc_text as utc_text  # re-exported: routers take it from here
from csms.ocpp.identity import MAX_ID_LENGTH, valid_charge_point_id

CHARGE_POINT_ID_PATTERN = r"^[^:/]+$"   # the OpenAPI view of csms.ocpp.identity.valid_charge_point_id


def _checked_id(value: str) -> str:
    if not valid_charge_point_id(value):
        raise ValueError("not a valid charge point id (OCPP identifierString: 1–48 printable characters, "
                         "no ':' or '/')")
    return value


CpId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=CHARGE_POINT_ID_PATTERN),
                 AfterValidator(_checked_id)]


UtcTime = Annotated[datetime, PlainSerializer(utc_text, return_type=str),
                    WithJsonSchema({"type": "string", "format": "date-time",
                                    "description": "UTC, e.g. 2025-01-31T23:59:59Z"}, mode="serialization")]


def database(pool: asyncpg.Pool | None) -> Callable[[], asyncpg.Pool]:
    """The router's database, or 503 on a role that has none (``csms ingest``'s API)."""
    def db() -> asyncpg.Pool:
        if pool is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "no database on this role")
        return pool
    return db


def bad_request(message: str) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, message)


def csv_response(body: bytes, filename: str) -> Response:
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})
