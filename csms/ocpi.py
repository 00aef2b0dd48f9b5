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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import asyncpg
from fastapi import APIRouter, Request, Response

from csms import countries

API_PREFIX = "/ocpi/cpo/2.2.1/locations"
OPEN_DATA_PATH = "/open-data/ocpi/locations"
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
CACHE_TTL_S = 30.0
_CACHE_MAX_ENTRIES = 256

# OCPI 2.2.1 ConnectorType (§8.4.4).
CONNECTOR_TYPES = frozenset({
    "CHADEMO", "CHAOJI", *(f"DOMESTIC_{c}" for c in "ABCDEFGHIJKLMNO"), "GBT_AC", "GBT_DC",
    "IEC_60309_2_single_16", "IEC_60309_2_three_16", "IEC_60309_2_three_32", "IEC_60309_2_three_64",
    "IEC_62196_T1", "IEC_62196_T1_COMBO", "IEC_62196_T2", "IEC_62196_T2_COMBO", "IEC_62196_T3A",
    "IEC_62196_T3C", "NEMA_5_20", "NEMA_6_30", "NEMA_6_50", "NEMA_10_30", "NEMA_10_50", "NEMA_14_30",
    "NEMA_14_50", "PANTOGRAPH_BOTTOM_UP", "PANTOGRAPH_TOP_DOWN", "TESLA_R", "TESLA_S",
})

# OCPP 1.6 ChargePointStatus and 2.0.1 ConnectorStatusEnumType -> OCPI Status (reporting reference §3.3).
_OCPP_TO_OCPI = {
    "Available": "AVAILABLE",
    "Preparing": "CHARGING", "Charging": "CHARGING", "SuspendedEV": "CHARGING", "SuspendedEVSE": "CHARGING",
    "Finishing": "CHARGING", "Occupied": "CHARGING",
    "Reserved": "RESERVED",
    "Unavailable": "INOPERATIVE",
    "Faulted": "OUTOFORDER",
}
# "Worst connector status" order, best first (CHARGING wins before this order is used).
_SEVERITY = {"AVAILABLE": 0, "RESERVED": 1, "CHARGING": 2, "BLOCKED": 3, "UNKNOWN": 4, "INOPERATIVE": 5,
             "OUTOFORDER": 6}
_CHARGER_WIDE = ("INOPERATIVE", "OUTOFORDER")


def ocpi_status(ocpp_status: str | None) -> str:
    """OCPI Status for one OCPP connector status; ``None`` (never reported) or anything unknown is UNKNOWN."""
    return _OCPP_TO_OCPI.get(ocpp_status or "", "UNKNOWN")


def evse_status(connector_statuses: Iterable[str | None], *, charger_status: str | None = None,
                live: bool = True) -> str:
    """OCPI ``EVSE.status`` from the OCPP statuses of its connectors.

    Not connected: UNKNOWN. A charger-level (connector 0) Unavailable/Faulted applies to every EVSE.
    Otherwise CHARGING if any connector is in use, else the worst connector status.
    """
    if not live:
        return "UNKNOWN"
    charger = ocpi_status(charger_status)
    if charger in _CHARGER_WIDE:
        return charger
    mapped = [ocpi_status(s) for s in connector_statuses]
    if not mapped:
        return "UNKNOWN"
    if "CHARGING" in mapped:
        return "CHARGING"
    return max(mapped, key=_SEVERITY.__getitem__)


def to_millis(value: datetime) -> datetime:
    """``value`` in UTC, truncated to the millisecond (the precision that is published)."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def latest_of(own: datetime, children: Iterable[datetime | None] = ()) -> datetime:
    """``last_updated`` of an object: its own change time or the newest of its children, whichever is later."""
    return to_millis(max([own, *(c for c in children if c is not None)]))


def ocpi_datetime(value: datetime) -> str:
    """OCPI DateTime (types §16.2): UTC with ``Z``, milliseconds only when not zero."""
    value = to_millis(value)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def parse_ocpi_datetime(text: str) -> datetime:
    """An RFC 3339 / OCPI DateTime; no offset means UTC (types §16.2). Cut to milliseconds like ours."""
    return to_millis(datetime.fromisoformat(text.strip()))


# --- Reading the registry -------------------------------------------------------------------------

_LOCATIONS_SQL = """
SELECT l.id, l.name, l.address, l.city, l.postal_code, l.state, l.country, l.latitude, l.longitude,
       l.time_zone, l.is_public, l.opening_hours::text AS opening_hours, l.last_updated,
       cp.id AS cp_id, e.evse_id, e.uid, e.emi3_id, e.last_updated AS evse_updated,
       c.connector_id, c.standard, c.format, c.power_type, c.max_voltage_v, c.max_amperage_a, c.rated_power_w,
       c.last_updated AS connector_updated
FROM locations l
LEFT JOIN charge_points cp ON cp.location_id = l.id
LEFT JOIN evses e ON e.charge_point_id = cp.id
LEFT JOIN connectors c ON c.charge_point_id = e.charge_point_id AND c.evse_id = e.evse_id
WHERE l.latitude IS NOT NULL AND l.longitude IS NOT NULL
  AND (l.is_public OR NOT $1::boolean) AND ($2::text IS NULL OR l.id = $2)
ORDER BY l.id, cp.id, e.evse_id, c.connector_id
"""

# Latest status of every connector and of every charger as a whole (evse 0 / connector 0).
_STATUS_SQL = """
WITH keys AS (
    SELECT charge_point_id, evse_id, connector_id FROM connectors WHERE charge_point_id = ANY($1::text[])
    UNION ALL
    SELECT id, 0, 0 FROM charge_points WHERE id = ANY($1::text[])
)
SELECT k.charge_point_id, k.evse_id, k.connector_id, s.status, s.time
FROM keys k
CROSS JOIN LATERAL (
    SELECT status, time FROM connector_status s
    WHERE s.charge_point_id = k.charge_point_id AND s.evse_id = k.evse_id AND s.connector_id = k.connector_id
    ORDER BY s.time DESC, s.received_at DESC LIMIT 1
) s
"""

_StatusKey = tuple[str, int, int]


def _text(value: str | None, max_len: int) -> str | None:
    return value[:max_len] if value else None


def _connector(row: asyncpg.Record, status_time: datetime | None) -> dict[str, Any] | None:
    if row["standard"] not in CONNECTOR_TYPES:
        return None
    return {"id": str(row["connector_id"]), "standard": row["standard"], "format": row["format"],
            "power_type": row["power_type"], "max_voltage": row["max_voltage_v"],
            "max_amperage": row["max_amperage_a"], "max_electric_power": round(row["rated_power_w"]),
            "last_updated": latest_of(row["connector_updated"], [status_time])}


def _opening_times(stored: str | None) -> dict[str, Any]:
    hours = json.loads(stored) if stored else None
    return hours if isinstance(hours, dict) else {"twentyfourseven": True}


def _location(rows: Sequence[asyncpg.Record], statuses: dict[_StatusKey, tuple[str, datetime]],
              live: set[str], country_code: str | None, party_id: str) -> dict[str, Any] | None:
    head = rows[0]
    party_country = country_code or countries.alpha2(head["country"])
    if party_country is None or not countries.is_alpha3(head["country"]):
        return None
    evses: list[dict[str, Any]] = []
    current: tuple[str, int] | None = None
    members: list[asyncpg.Record] = []

    def flush() -> None:
        if current is None:
            return
        cp_id = current[0]
        charger = statuses.get((cp_id, 0, 0))
        connectors: list[dict[str, Any]] = []
        connector_statuses: list[str | None] = []
        for row in members:
            own = statuses.get((cp_id, row["evse_id"], row["connector_id"]))
            obj = _connector(row, own[1] if own else None)
            if obj is not None:
                connectors.append(obj)
                connector_statuses.append(own[0] if own else None)
        if not connectors:
            return
        first = members[0]
        evse: dict[str, Any] = {"uid": first["uid"]}
        if first["emi3_id"]:
            evse["evse_id"] = first["emi3_id"]
        evse["status"] = evse_status(connector_statuses, charger_status=charger[0] if charger else None,
                                     live=cp_id in live)
        evse["connectors"] = connectors
        evse["last_updated"] = latest_of(first["evse_updated"], [*(c["last_updated"] for c in connectors),
                                                                 charger[1] if charger else None])
        evses.append(evse)

    for row in rows:
        if row["evse_id"] is None or row["connector_id"] is None:
            continue
        key = (row["cp_id"], row["evse_id"])
        if key != current:
            flush()
            current, members = key, []
        members.append(row)
    flush()

    location: dict[str, Any] = {"country_code": party_country, "party_id": party_id, "id": head["id"],
                                "publish": head["is_public"]}
    if head["name"]:
        location["name"] = head["name"][:255]
    location["address"] = head["address"][:45]
    location["city"] = head["city"][:45]
    for field, max_len in (("postal_code", 10), ("state", 20)):
        value = _text(head[field], max_len)
        if value is not None:
            location[field] = value
    location["country"] = head["country"]
    location["coordinates"] = {"latitude": f"{head['latitude']:.6f}", "longitude": f"{head['longitude']:.6f}"}
    location["evses"] = evses
    location["time_zone"] = head["time_zone"]
    location["opening_times"] = _opening_times(head["opening_hours"])
    location["last_updated"] = latest_of(head["last_updated"], (e["last_updated"] for e in evses))
    return location


async def load_locations(pool: asyncpg.Pool, *, live: set[str], country_code: str | None, party_id: str,
                         public_only: bool = False, location_id: str | None = None) -> list[dict[str, Any]]:
    """OCPI Location objects (``last_updated`` values still as datetimes), ordered by id. ``country_code``
    None: each location's party country is its own country's alpha-2 code."""
    rows = await pool.fetch(_LOCATIONS_SQL, public_only, location_id)
    cp_ids = sorted({r["cp_id"] for r in rows if r["cp_id"] is not None})
    statuses: dict[_StatusKey, tuple[str, datetime]] = {}
    if cp_ids:
        for s in await pool.fetch(_STATUS_SQL, cp_ids):
            statuses[(s["charge_point_id"], s["evse_id"], s["connector_id"])] = (s["status"], s["time"])
    grouped: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        grouped.setdefault(row["id"], []).append(row)
    found = (_location(group, statuses, live, country_code, party_id) for group in grouped.values())
    return [location for location in found if location is not None]


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


def build_ocpi_router(*, pool: asyncpg.Pool, live_ids: Callable[[], set[str]], token: str,
                      country_code: str | None = None, party_id: str = "CSM",
                      clock: Callable[[], float] = time.monotonic) -> APIRouter:
    """The OCPI 2.2.1 Locations sender endpoints and the public open-data feed.

    ``live_ids`` returns the ids of the chargers connected right now; ``clock`` (monotonic seconds)
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
        return await load_locations(pool, live=live_ids(), country_code=country_code, party_id=party_id,
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
