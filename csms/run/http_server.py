"""uvicorn inside our event loop, started and stopped by the process composition."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from typing import Any

import uvicorn

from csms.common.errors import ConfigurationError


class _Uvicorn(uvicorn.Server):
    """uvicorn inside our loop; signals belong to the entry point, not to uvicorn."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """The HTTP API and /metrics, served by uvicorn inside our event loop."""

    def __init__(self, *, app: Any, host: str, port: int, graceful_shutdown_s: float) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off", access_log=False,
                                server_header=False, timeout_graceful_shutdown=max(1, round(graceful_shutdown_s)))
        self._server = _Uvicorn(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self, *, timeout_s: float) -> None:
        self._task = asyncio.create_task(self._server.serve(), name="http-server")
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
