"""The one text form of a moment in the operator API, the reports and the exports.

UTC, RFC 3339 with "Z", whole seconds. (OCPP frames use their own form, with milliseconds:
csms.ocpp.handlers_common.iso_utc, 2.0.1 Part 2 §2.1.4.)
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_text(moment: datetime) -> str:
    """``2025-01-31T23:59:59Z``; an aware moment in any zone is converted to UTC."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
