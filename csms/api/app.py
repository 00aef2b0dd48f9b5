"""The HTTP side: /healthz, /metrics and the operator API under /api/v1.

Operator endpoints require ``Authorization: Bearer <token>``; the token is compared
in constant time. Public endpoints (health, metrics) are read-only.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from csms import __version__
from csms.api.certificates import build_certificates_router
from csms.api.commands import build_commands_router
from csms.api.credentials import build_credentials_router
from csms.api.exports import build_exports_router
from csms.api.live import build_live_router, connected_ids
from csms.api.ocpi import build_ocpi_router
from csms.api.ocpp21 import build_ocpp21_router
from csms.api.registry import build_registry_router
from csms.api.reporting import build_reporting_router
from csms.api.security_events import build_security_events_router
from csms.api.tariffs import build_tariffs_router
from csms.gateway.server import Gateway

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]

_bearer = HTTPBearer(auto_error=False)


def create_app(*, metrics: CollectorRegistry, api_token: str, health: HealthCheck, ready: HealthCheck | None = None,
               pool: asyncpg.Pool | None, gateway: Gateway | None, ocpi_token: str | None = None,
               ocpi_country_code: str | None = None, ocpi_party_id: str = "CSM") -> FastAPI:
    app = FastAPI(title="CSMS telemetry API", version=__version__,
                  description="Operator API of the OCPP central system; reporting under /api/v1/reporting.")
    token_bytes = api_token.encode()

    def require_token(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token_bytes):
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                                headers={"WWW-Authenticate": "Bearer"})

    operator = [Depends(require_token)]

    # Input the database cannot store (NUL characters, values out of a column's range, a
    # check constraint) is the caller's error: a 400 with a clear message, never a 500.
    @app.exception_handler(asyncpg.DataError)
    async def _data_error(request: Request, exc: asyncpg.DataError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid value in the request: {exc.__class__.__name__}"}, status_code=400)

    @app.exception_handler(asyncpg.IntegrityConstraintViolationError)
    async def _integrity_error(request: Request, exc: asyncpg.IntegrityConstraintViolationError) -> JSONResponse:
        return JSONResponse({"detail": "the request conflicts with stored data or its constraints"},
                            status_code=400)

    @app.exception_handler(UnicodeEncodeError)
    async def _unicode_error(request: Request, exc: UnicodeEncodeError) -> JSONResponse:
        return JSONResponse({"detail": "text with invalid characters (lone surrogates)"}, status_code=400)

    @app.get("/healthz", tags=["public"])
    async def healthz(response: Response) -> dict[str, Any]:
        """Liveness: 200 while the process answers (the body says what it depends on)."""
        result = await health()
        if not result.get("ok"):
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return result

    @app.get("/readyz", tags=["public"])
    async def readyz(response: Response) -> dict[str, Any]:
        """Readiness: 200 when this node can take chargers (database, bus, not draining), else 503."""
        result = await (ready or health)()
        if not result.get("ok"):
            response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return result

    @app.get("/metrics", tags=["public"], response_class=Response)
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    app.include_router(build_registry_router(pool=pool, gateway=gateway), dependencies=operator)
    app.include_router(build_live_router(pool=pool, gateway=gateway), dependencies=operator)
    app.include_router(build_commands_router(gateway=gateway), dependencies=operator)
    app.include_router(build_certificates_router(pool=pool, gateway=gateway), dependencies=operator)
    app.include_router(build_security_events_router(pool=pool), dependencies=operator)
    app.include_router(build_credentials_router(pool=pool, gateway=gateway), dependencies=operator)  # key rotation
    app.include_router(build_tariffs_router(gateway=gateway), dependencies=operator)  # OCPP 2.1 shortcuts
    app.include_router(build_ocpp21_router(pool=pool), dependencies=operator)  # OCPP 2.1 data (issue 14)
    app.include_router(build_reporting_router(pool=pool), dependencies=operator)
    app.include_router(build_exports_router(pool=pool), dependencies=operator)
    if pool is not None:
        # OCPI partners authenticate with their own token (OCPI 2.2.1 "Token"); without one
        # configured, a random token nobody knows keeps the partner endpoints closed.
        app.include_router(build_ocpi_router(
            pool=pool, token=ocpi_token or secrets.token_urlsafe(32), country_code=ocpi_country_code,
            party_id=ocpi_party_id,
            live_ids=functools.partial(connected_ids, gateway)))

    return app
