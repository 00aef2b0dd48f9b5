"""OCPI 2.2.1 Locations module, CPO (sender) interface, read-only; plus a public open-data feed.

Endpoints (mounted by the caller with ``app.include_router(build_ocpi_router(...))``):

* ``GET /ocpi/cpo/2.2.1/locations`` — Locations GET List (OCPI 2.2.1 mod_locations §8.2.1.1) with
  ``date_from`` (inclusive) / ``date_to`` (exclusive) on ``last_updated``, and the pagination of
  transport_and_format §4.1.3 (``offset``, ``limit``; ``X-Total-Count``, ``X-Limit``, ``Link: <…>; rel="next"``).
  A ``limit`` above 1000 is lowered to 1000 as §4.1.3 allows; ``X-Limit`` tells the client.
* ``GET /ocpi/cpo/2.2.1/locations/{location_id}[/{evse_uid}[/{connector_id}]]`` — GET Object (§8.2.1.2);
  an unknown object answers HTTP 404 with status_code 2003 "Unknown Location" (status_codes §5.2).
* ``GET /open-data/ocpi/locations`` — the same list, without authentication, only ``publish = true``
  (``locations.is_public``) locations, CORS ``*``, and answered from an in-process cache that is at most
  30 s old (per distinct query and host), with ``Cache-Control: public, max-age=<remaining seconds ≤ 30>``.

Token: OCPI 2.2.1 transport_and_format §4.1.2 sends ``Authorization: Token <base64(token)>``; the raw token
(OCPI 2.1.1 style) is accepted too. Both are compared in constant time; otherwise HTTP 401.
Every answer uses the response envelope of §4.1.7 (``data``, ``status_code``, ``status_message``,
``timestamp``), and echoes ``X-Request-ID`` / ``X-Correlation-ID`` (§4.1.4) when the request had them.

Objects follow mod_locations §8.3.1 (Location), §8.3.2 (EVSE), §8.3.3 (Connector), §8.4.13 (GeoLocation),
§8.4.14 (Hours) and types §16.2 (DateTime: UTC, ``Z``, at most milliseconds). Mapping rules:

* ``EVSE.status`` (§8.4.22) from the latest OCPP status per connector, see :func:`evse_status`
  (reporting reference §3.3). A charger that is not connected now is ``UNKNOWN``; a charge-point-level
  (evse 0 / connector 0) Unavailable or Faulted makes every EVSE of that charger INOPERATIVE / OUTOFORDER.
* ``last_updated`` propagates upwards (§8.2.1.1): Connector = max(connector row, its latest status);
  EVSE = max(EVSE row, its connectors, the charger-level status); Location = max(location row, its EVSEs).
  All are truncated to milliseconds, the precision that is published, so that ``date_from`` set to a
  published ``last_updated`` matches that object again.

``country_code``/``party_id`` (§8.3.1) name the CPO party that owns the Location, the pair an eMSP keys
the object by. ``country_code`` is the configured one (``--ocpi-country-code``: a CPO with one OCPI
registration publishes every site under it, wherever the site is) or, when none is configured, the ISO
3166-1 alpha-2 form of the location's own ``country`` (alpha-3): a CPO registered once per country, as
eMI3 operator ids are issued per country (``IN*CSM``, ``DE*CSM``, ``GB*CSM``), so an Indian site is ``IN``.

Left out on purpose, because OCPI would not accept them: locations without coordinates (GeoLocation is
required) or whose ``country`` is not an ISO 3166-1 alpha-3 code, connectors whose ``standard`` is not an
OCPI ConnectorType, and EVSEs left without connectors.
Strings longer than OCPI allows (address/city 45, postal_code 10, state 20, name 255) are cut.
A charger connecting or disconnecting changes ``status`` to/from UNKNOWN without moving ``last_updated``.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
from fastapi import APIRouter, Request, Response

from csms.api import ocpi_objects
from csms.api.ocpi_objects import evse_status, latest_of, ocpi_datetime, ocpi_status, parse_ocpi_datetime
from csms.store import ocpi as ocpi_store

__all__ = ["build_ocpi_router", "evse_status", "latest_of", "load_locations", "ocpi_datetime", "ocpi_status",
           "parse_ocpi_datetime"]

API_PREFIX = "/ocpi/cpo/2.2.1/locations"
OPEN_DATA_PATH = "/open-data/ocpi/locations"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CACHE_TTL_S = 30.0
_CACHE_MAX_ENTRIES = 256

# OCPI 2.2.1 ConnectorType (§8.4.4).
async def load_locations(pool: asyncpg.Pool, *, live: set[str], country_code: str | None, party_id: str,
                         public_only: bool = False, location_id: str | None = None) -> list[dict[str, Any]]:
    """OCPI Location objects (``last_updated`` values still as datetimes), ordered by id. ``country_code``
    None: each location's party country is its own country's alpha-2 code."""
    groups, statuses = await ocpi_store.location_rows(pool, public_only=public_only, location_id=location_id)
    return ocpi_objects.locations(groups, statuses, live=live, country_code=country_code, party_id=party_id)


# --- HTTP -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ListQuery:
    date_from: datetime | None = None
    date_to: datetime | None = None
    offset: int = 0
    limit: int = DEFAULT_LIMIT

    @classmethod
    def parse(cls, date_from: str | None, date_to: str | None, offset: str | None,
              limit: str | None) -> ListQuery:
        """Raise ValueError (answered with status_code 2001) on a malformed parameter."""
        try:
            start = parse_ocpi_datetime(date_from) if date_from else None
            end = parse_ocpi_datetime(date_to) if date_to else None
        except ValueError:
            raise ValueError("date_from/date_to must be RFC 3339 date-times") from None
        try:
            first = int(offset) if offset not in (None, "") else 0
            size = int(limit) if limit not in (None, "") else DEFAULT_LIMIT
        except ValueError:
            raise ValueError("offset and limit must be integers") from None
        if first < 0 or size < 1:
            raise ValueError("offset must be >= 0 and limit >= 1")
        return cls(start, end, first, min(size, MAX_LIMIT))

    def matches(self, last_updated: datetime) -> bool:
        return ((self.date_from is None or last_updated >= self.date_from)
                and (self.date_to is None or last_updated < self.date_to))

    def params(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.date_from is not None:
            out["date_from"] = ocpi_datetime(self.date_from)
        if self.date_to is not None:
            out["date_to"] = ocpi_datetime(self.date_to)
        return {**out, "offset": str(self.offset), "limit": str(self.limit)}


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return ocpi_datetime(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _body(data: Any, status_code: int = 1000, message: str = "Success") -> bytes:
    envelope: dict[str, Any] = {} if data is None else {"data": data}
    envelope |= {"status_code": status_code, "status_message": message,
                 "timestamp": ocpi_datetime(datetime.now(UTC))}
    return json.dumps(envelope, default=_json_default, separators=(",", ":")).encode()


def _respond(request: Request, body: bytes, http_status: int = 200,
             headers: dict[str, str] | None = None) -> Response:
    out = dict(headers or {})
    for name in ("X-Request-ID", "X-Correlation-ID"):
        value = request.headers.get(name)
        if value:
            out[name] = value[:255]
    return Response(body, status_code=http_status, media_type="application/json", headers=out)


def _page(request: Request, query: ListQuery, locations: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    selected = [loc for loc in locations if query.matches(loc["last_updated"])]
    headers = {"X-Total-Count": str(len(selected)), "X-Limit": str(query.limit)}
    if query.offset + query.limit < len(selected):
        following = replace(query, offset=query.offset + query.limit)
        headers["Link"] = f'<{request.url.replace(query=urlencode(following.params()))}>; rel="next"'
    return _body(selected[query.offset:query.offset + query.limit]), headers


def build_ocpi_router(*, pool: asyncpg.Pool, live_ids: Callable[[], Awaitable[set[str]]], token: str,
                      country_code: str | None = None, party_id: str = "CSM",
                      clock: Callable[[], float] = time.monotonic) -> APIRouter:
    """The OCPI 2.2.1 Locations sender endpoints and the public open-data feed.

    ``live_ids`` returns the ids of the chargers connected right now (fleet-wide); ``clock`` (monotonic seconds)
    drives the open-data cache and is only replaced by tests. ``country_code`` None: every location is
    published under its own country's party (see the module docstring).
    """
    if not token:
        raise ValueError("an OCPI token is required")
    bad_country = country_code is not None and (len(country_code) != 2 or not country_code.isalpha())
    if bad_country or len(party_id) != 3 or not party_id.isalnum():
        raise ValueError("country_code must be 2 letters and party_id 3 letters/digits (OCPI CiString(2)/(3))")
    accepted = (token.encode(), base64.b64encode(token.encode()))
    router = APIRouter(tags=["ocpi"])
    cache: dict[tuple[str, ...], tuple[float, bytes, dict[str, str]]] = {}
    cache_lock = asyncio.Lock()

    def authorized(request: Request) -> bool:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        given = credentials.strip().encode()
        ok = False
        for candidate in accepted:  # no short-circuit: both comparisons always run
            ok |= hmac.compare_digest(given, candidate)
        return ok and scheme.lower() == "token"

    def unauthorized(request: Request) -> Response:
        return _respond(request, _body(None, 2000, "Unauthorized: missing or wrong token"), 401,
                        {"WWW-Authenticate": "Token"})

    def unknown(request: Request) -> Response:
        return _respond(request, _body(None, 2003, "Unknown Location"), 404)

    async def load(*, public_only: bool = False, location_id: str | None = None) -> list[dict[str, Any]]:
        return await load_locations(pool, live=await live_ids(), country_code=country_code, party_id=party_id,
                                    public_only=public_only, location_id=location_id)

    async def one(location_id: str) -> dict[str, Any] | None:
        found = await load(location_id=location_id)
        return found[0] if found else None

    @router.get(API_PREFIX, summary="OCPI 2.2.1 Locations: GET List (paginated)")
    async def list_locations(request: Request, date_from: str | None = None, date_to: str | None = None,
                             offset: str | None = None, limit: str | None = None) -> Response:
        if not authorized(request):
            return unauthorized(request)
        try:
            query = ListQuery.parse(date_from, date_to, offset, limit)
        except ValueError as exc:
            return _respond(request, _body(None, 2001, str(exc)), 400)
        body, headers = _page(request, query, await load())
        return _respond(request, body, headers=headers)

    @router.get(API_PREFIX + "/{location_id}", summary="OCPI 2.2.1 Locations: GET Location")
    async def get_location(request: Request, location_id: str) -> Response:
        if not authorized(request):
            return unauthorized(request)
        location = await one(location_id)
        return unknown(request) if location is None else _respond(request, _body(location))

    @router.get(API_PREFIX + "/{location_id}/{evse_uid}", summary="OCPI 2.2.1 Locations: GET EVSE")
    async def get_evse(request: Request, location_id: str, evse_uid: str) -> Response:
        if not authorized(request):
            return unauthorized(request)
        location = await one(location_id)
        evse = next((e for e in location["evses"] if e["uid"] == evse_uid), None) if location else None
        return unknown(request) if evse is None else _respond(request, _body(evse))

    @router.get(API_PREFIX + "/{location_id}/{evse_uid}/{connector_id}",
                summary="OCPI 2.2.1 Locations: GET Connector")
    async def get_connector(request: Request, location_id: str, evse_uid: str, connector_id: str) -> Response:
        if not authorized(request):
            return unauthorized(request)
        location = await one(location_id)
        evse = next((e for e in location["evses"] if e["uid"] == evse_uid), None) if location else None
        connector = next((c for c in evse["connectors"] if c["id"] == connector_id), None) if evse else None
        return unknown(request) if connector is None else _respond(request, _body(connector))

    @router.get(OPEN_DATA_PATH, tags=["public"], summary="Open data: published locations (OCPI 2.2.1 shapes)")
    async def open_data_locations(request: Request, date_from: str | None = None, date_to: str | None = None,
                                  offset: str | None = None, limit: str | None = None) -> Response:
        cors = {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": "X-Total-Count, X-Limit, Link"}
        try:
            query = ListQuery.parse(date_from, date_to, offset, limit)
        except ValueError as exc:
            return _respond(request, _body(None, 2001, str(exc)), 400, cors)
        # The host is part of the key so that a forged Host header cannot poison other clients' Link.
        key = (str(request.base_url), *query.params().values())
        entry = cache.get(key)
        now = clock()
        if entry is None or now - entry[0] >= CACHE_TTL_S:
            async with cache_lock:  # one database read per key and TTL, even under concurrent misses
                now = clock()
                entry = cache.get(key)
                if entry is None or now - entry[0] >= CACHE_TTL_S:
                    for stale in [k for k, v in cache.items() if now - v[0] >= CACHE_TTL_S]:
                        del cache[stale]
                    while len(cache) >= _CACHE_MAX_ENTRIES:
                        del cache[next(iter(cache))]
                    body, headers = _page(request, query, await load(public_only=True))
                    entry = cache[key] = (now, body, headers)
        max_age = max(0, math.floor(CACHE_TTL_S - (now - entry[0])))
        return _respond(request, entry[1], headers={**entry[2], **cors,
                                                    "Cache-Control": f"public, max-age={max_age}"})

    return router
