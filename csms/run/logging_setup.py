"""Logging configuration; called only from the command-line entry point.

Per-connection context (``charge_point_id``, set by the gateway's LoggerAdapter) reaches every
line: a filter gives records without it a "-", so one format serves all loggers.
"""

from __future__ import annotations

import logging
import logging.config


class ChargePointContext(logging.Filter):
    """Give every record a ``charge_point_id`` ("-" outside a charger's connection)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "charge_point_id"):
            record.charge_point_id = "-"
        return True


def configure_logging(level: str) -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"charge_point": {"()": ChargePointContext}},
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)-7s %(name)s [%(charge_point_id)s]: %(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain",
                                "filters": ["charge_point"]}},
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
