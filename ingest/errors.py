"""Exceptions of the ``ingest`` package.

::

    IngestError                 root
    ├── BatchWriteError         a batch could not be committed (retried with back-off)
    └── MalformedBatchError     a bus message could not be decoded (acknowledged and counted, never retried)
"""

from __future__ import annotations


class IngestError(Exception):
    """Root of the ingest worker's exceptions."""


class BatchWriteError(IngestError):
    """A batch could not be committed to TimescaleDB."""


class MalformedBatchError(IngestError, ValueError):
    """A bus message could not be decoded into an event batch."""
