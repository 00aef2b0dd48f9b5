"""Logging configuration; called only from the command-line entry point."""

from __future__ import annotations

import logging.config


def configure_logging(level: str) -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            # The ocpp package logs every raw frame at INFO, idTags and credentials included
            # (A01.FR.09): keep it at WARNING whatever our level is.
            "ocpp": {"level": "WARNING"},
            "websockets": {"level": "WARNING"},
            "uvicorn": {"level": "WARNING"},
            "uvicorn.error": {"level": "WARNING"},
            "asyncio": {"level": "WARNING"},
            # aiomqtt warns on every publish beyond 10 in flight, which the outbox does on purpose.
            "mqtt": {"level": "ERROR"},
        },
    })
