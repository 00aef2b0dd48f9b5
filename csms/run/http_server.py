"""uvicorn inside our event loop, started and stopped by the process composition."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from csms.common.errors import ConfigurationError


class _Uvicorn(uvicorn.Server):
    """uvicorn inside our loop; signals belong to the entry point, not to uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound with SO_REUSEPORT: every worker of a host binds its own on the same port and
    the kernel spreads the connections over them (socket(7)); asyncio makes it listen."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


class HttpServer:
    """The HTTP API and /metrics, served by uvicorn inside our event loop.

    ``reuse_port``: the port is shared with the other workers of this host (SO_REUSEPORT), so that
    the operator API answers on one port whichever worker takes the request.
    """

    def __init__(self, *, app: Any, host: str, port: int, graceful_shutdown_s: float,
                 reuse_port: bool = False) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off", access_log=False,
                                server_header=False, timeout_graceful_shutdown=max(1, round(graceful_shutdown_s)))
        self._server = _Uvicorn(config)
        self._host = host
        self._port = port
        self._reuse_port = reuse_port
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, timeout_s: float) -> None:
        sockets = [reuse_port_socket(self._host, self._port)] if self._reuse_port else None
        self._task = asyncio.create_task(self._server.serve(sockets=sockets), name="http-server")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise ConfigurationError("HTTP server stopped while starting")
            if asyncio.get_running_loop().time() > deadline:
                raise ConfigurationError("HTTP server did not start in time")
            await asyncio.sleep(0.01)

    @property
    def port(self) -> int:
        for server in self._server.servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return 0

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        await self._task
        self._task = None


def metrics_app(metrics: CollectorRegistry, health: Callable[[], Awaitable[dict[str, Any]]],
                ready: Callable[[], Awaitable[dict[str, Any]]] | None = None) -> Starlette:
    """/metrics, /healthz and /readyz of one worker on its own port (``metrics_port_base + i``): the shared
    API port reaches a random worker, Prometheus (and a per-worker probe) must reach each one."""

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> JSONResponse:
        result = await health()
        return JSONResponse(result, status_code=200 if result.get("ok") else 503)

    async def readyz(request: Request) -> JSONResponse:
        result = await (ready or health)()
        return JSONResponse(result, status_code=200 if result.get("ok") else 503)

    return Starlette(routes=[Route("/metrics", metrics_endpoint), Route("/healthz", healthz),
                             Route("/readyz", readyz)])
