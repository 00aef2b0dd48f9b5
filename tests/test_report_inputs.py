"""Every reporting input gets a 4xx with a clear message, never a 500 (issue 11 item 8)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.central import running_central

pytestmark = pytest.mark.integration

R = "/api/v1/reporting"
PORT = f"{R}/ports/IN1/1"
DAY = {"from": "2026-01-05T00:00:00Z", "to": "2026-01-06T00:00:00Z"}

# (path, params, expected status, a word the message must contain)
CASES: list[tuple[str, dict[str, Any], int, str]] = [
    # NEVI report months at the edges of the calendar (were 500: year 10000 / year 0)
    *((path, {"method": "nevi", "report_month": month}, 400, "report_month")
      for path in (f"{PORT}/uptime", f"{R}/uptime")
      for month in ("9999-12", "0000-01", "0001-01", "1999-12", "2101-01", "2026-13", "2026-00", "26-01", "2026-1")),
    # generic / UK windows in year 1 or 9999, also with offsets that leave the calendar in UTC
    *((path, {"method": method, "from": start, "to": end}, 400, word)
      for path in (f"{PORT}/uptime", f"{R}/uptime")
      for method in ("generic", "uk")
      for start, end, word in (("0001-01-01T00:00:00Z", "0001-01-02T00:00:00Z", "between"),
                               ("0001-01-01T00:00:00+14:00", "0001-01-02T00:00:00Z", "between"),
                               ("9999-12-30T00:00:00Z", "9999-12-31T23:59:59.999999-12:00", "between"),
                               ("2026-01-05T00:00:00", "2026-01-06T00:00:00", "offset"),
                               ("2026-01-06T00:00:00Z", "2026-01-05T00:00:00Z", "positive"),
                               ("2025-01-01T00:00:00Z", "2026-06-01T00:00:00Z", "400 days"))),
    (f"{PORT}/outages", {"from": "9999-12-30T00:00:00Z", "to": "9999-12-31T00:00:00Z"}, 400, "between"),
    (f"{PORT}/outages", {"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"}, 400, "between"),
    # utilization in year 1 or 9999 (were 500, or a one-second window at 100 %)
    *((path, {"from": start, "to": end}, 400, "between")
      for path in (f"{PORT}/utilization", f"{R}/stations/LOC-IN/utilization", f"{R}/network/utilization",
                   f"{R}/stations/LOC-IN/utilization/profile")
      for start, end in (("0001-01-01T00:00:00Z", "0001-01-08T00:00:00Z"),
                         ("9999-12-01T00:00:00Z", "9999-12-31T00:00:00Z"),
                         ("9999-12-31T00:00:00Z", "9999-12-31T23:59:59Z"))),
    # station-local windows
    *((f"{PORT}/uptime", {"method": "generic", **params}, 400, word) for params, word in (
        ({"local_date": "2026-02-30"}, "local_date"), ({"local_date": "9999-12-31"}, "year"),
        ({"local_date": "0001-01-01"}, "year"), ({"local_date": "20260101"}, "YYYY-MM-DD"),
        ({"month": "9999-12"}, "year"), ({"month": "2026-13"}, "month"), ({"year": "0001"}, "year"),
        ({"year": "9999"}, "year"), ({"year": "26"}, "YYYY"),
        ({"month": "2026-01", "local_date": "2026-01-05"}, "one way"), ({**DAY, "month": "2026-01"}, "one way"),
        ({"from": DAY["from"]}, "together"), ({}, "one way"))),
    (f"{PORT}/uptime", {"method": "nevi", "report_month": "2026-01", "month": "2026-01"}, 400, "report_month only"),
    (f"{PORT}/uptime", {"method": "generic", "report_month": "2026-01", **DAY}, 400, "method=nevi"),
    (f"{PORT}/uptime", {"method": "nevi"}, 400, "report_month"),
    (f"{R}/network/utilization", {"month": "2026-01"}, 400, "tz"),
    (f"{R}/network/utilization", {**DAY, "tz": "Mars/Olympus"}, 400, "time zone"),
    (f"{R}/network/utilization", {**DAY, "bucket": "hour"}, 400, "zone"),
    (f"{R}/stations/LOC-IN/utilization", {**DAY, "bucket": "fortnight"}, 422, "bucket"),
    (f"{R}/stations/LOC-IN/utilization", {**DAY, "basis": "lunar"}, 422, "basis"),
    (f"{PORT}/uptime", {"method": "cec", **DAY}, 422, "method"),
    (f"{PORT}/uptime", {"method": "generic", **DAY, "offline_grace_s": "-1"}, 422, "offline_grace_s"),
    (f"{R}/uptime", {"method": "generic", **DAY, "group_by": "planet"}, 422, "group_by"),
    # unknown things: 404, for GET as for POST
    (f"{R}/ports/NOPE/1/exclusions", {}, 404, "no port"),
    (f"{R}/ports/NOPE/1/uptime", {"method": "generic", **DAY}, 404, "no port"),
    (f"{R}/ports/NOPE/1/outages", DAY, 404, "no port"),
    (f"{R}/ports/NOPE/1/utilization", DAY, 404, "no port"),
    (f"{R}/stations/NOPE/utilization", DAY, 404, "no location"),
    (f"{R}/uptime", {"method": "generic", **DAY, "location_id": "NOPE"}, 404, "no ports"),
    # EV-ChART exports
    *((f"{R}/exports/ev-chart/module-{m}.csv", params, 422, word) for m in (2, 3, 4) for params, word in (
        ({"year": 9999, "quarter": 1}, "year"), ({"year": 1, "quarter": 1}, "year"),
        ({"year": 2026, "quarter": 5}, "quarter"), ({"year": 2026, "quarter": 1, "network_provider": "A B"},
                                                    "network_provider"))),
]


async def test_every_bad_reporting_input_is_a_4xx_with_a_message(db_url: str) -> None:
    async with running_central(db_url) as central:
        await central.register("IN1", evses=1)
        conn = await asyncpg.connect(db_url)
        try:
            await conn.execute("INSERT INTO locations (id, name, time_zone) VALUES ('LOC-IN', 'In', 'Asia/Kolkata')")
        finally:
            await conn.close()
        failures = []
        async with central.api() as api:
            for path, params, expected, word in CASES:
                reply = await api.get(path, params=params)
                text = reply.text
                if reply.status_code != expected or word.lower() not in text.lower():
                    failures.append((path, params, reply.status_code, text[:300]))
            # POST exclusions: the same bounds, and 404 for an unknown port.
            body = {"starts_at": "0001-01-01T00:00:00Z", "ends_at": "9999-12-31T00:00:00Z", "reason": "vandalism",
                    "claimed_by": "ops@example"}
            reply = await api.post(f"{PORT}/exclusions", json=body)
            if reply.status_code != 422 or "between" not in reply.text:
                failures.append(("POST exclusions", body, reply.status_code, reply.text[:300]))
            reply = await api.post(f"{R}/ports/NOPE/1/exclusions", json={**body, "starts_at": "2026-01-01T00:00:00Z",
                                                                           "ends_at": "2026-01-02T00:00:00Z"})
            if reply.status_code != 404:
                failures.append(("POST exclusions NOPE", body, reply.status_code, reply.text[:300]))
            # A window entirely in the future is accepted, computed over nothing, and says so.
            future = await api.get(f"{PORT}/uptime", params={"method": "generic", "from": "2099-01-01T00:00:00Z",
                                                             "to": "2099-12-31T00:00:00Z"})
            assert future.status_code == 200, future.text
            assert future.json()["complete"] is False
            assert future.json()["uptime_pct"] is None
            assert future.json()["computed_until"] == "2099-01-01T00:00:00Z"
            assert [r["code"] for r in future.json()["uptime_pct_null_reasons"]] == ["period_not_started"]
            util = await api.get(f"{PORT}/utilization", params={"from": "2099-01-01T00:00:00Z",
                                                                "to": "2099-12-31T00:00:00Z", "bucket": "month"})
            assert util.status_code == 200, util.text
            assert (util.json()["avail_min"], util.json()["u_occupied_pct"], util.json()["buckets"]) == (0, None, [])
    assert failures == []
