"""SecurityEventNotification against a running central system: stored before it is confirmed, once per
notification (a retry with a new message id is the same event), queryable with filters and pages, critical
ones counted in csms_security_events_total (bounded labels: an unknown type is "Other")."""

from __future__ import annotations

import re

import pytest

from tests.central import PASSWORD, running_central
from tests.raw_security_charger import boot_payload, raw_charger

pytestmark = pytest.mark.integration


def counter(text: str, event_type: str, critical: str) -> float:
    found = re.search(rf'^csms_security_events_total{{critical="{critical}",type="{event_type}"}} (\S+)$', text,
                      re.M) or re.search(
        rf'^csms_security_events_total{{type="{event_type}",critical="{critical}"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


async def test_security_events_stored_once_queryable_and_counted(db_url: str) -> None:
    async with running_central(db_url, security_profile=1) as central:
        await central.register("SEC-16")
        await central.register("SEC-201")
        async with central.api() as api:
            before = (await api.get("/metrics")).text
            assert counter(before, "TamperDetectionActivated", "true") == 0   # present from the start
            async with raw_charger(central.ws_base, "SEC-16", "1.6", password=PASSWORD) as c16, \
                    raw_charger(central.ws_base, "SEC-201", "2.0.1", password=PASSWORD) as c201:
                for charger, version in ((c16, "1.6"), (c201, "2.0.1")):
                    assert (await charger.call("BootNotification", boot_payload(version)))["status"] == "Accepted"
                tamper = {"type": "TamperDetectionActivated", "timestamp": "2026-11-30T10:00:00.000Z",
                          "techInfo": "enclosure opened"}
                # The same notification twice (a retry after a lost answer): confirmed both times, stored once.
                assert await c16.call("SecurityEventNotification", tamper) == {}
                assert await c16.call("SecurityEventNotification", tamper) == {}
                assert await c201.call("SecurityEventNotification", tamper) == {}
                assert await c201.call("SecurityEventNotification", {
                    "type": "StartupOfTheDevice", "timestamp": "2026-11-30T10:01:00.000Z"}) == {}
                assert await c201.call("SecurityEventNotification", {
                    "type": "InvalidMessages", "timestamp": "2026-11-30T10:02:00.000Z"}) == {}
                assert await c201.call("SecurityEventNotification", {
                    "type": "VendorSpecificThing", "timestamp": "2026-11-30T10:03:00.000Z"}) == {}

            page = (await api.get("/api/v1/security-events")).json()
            assert [(e["charge_point_id"], e["type"], e["critical"]) for e in page["events"]] == [
                ("SEC-201", "VendorSpecificThing", False), ("SEC-201", "InvalidMessages", False),
                ("SEC-201", "StartupOfTheDevice", True), ("SEC-201", "TamperDetectionActivated", True),
                ("SEC-16", "TamperDetectionActivated", True)]
            assert page["next_before_id"] is None
            assert page["events"][-1]["tech_info"] == "enclosure opened"
            assert page["events"][-1]["occurred_at"] == "2026-11-30T10:00:00Z"
            assert page["events"][-1]["ocpp_version"] == "1.6"

            one = (await api.get("/api/v1/security-events", params={"charge_point_id": "SEC-201",
                                                                    "critical": "true", "limit": 1})).json()
            assert [e["type"] for e in one["events"]] == ["StartupOfTheDevice"]
            rest = (await api.get("/api/v1/security-events", params={
                "charge_point_id": "SEC-201", "critical": "true", "limit": 1,
                "before_id": one["next_before_id"]})).json()
            assert [e["type"] for e in rest["events"]] == ["TamperDetectionActivated"]
            assert rest["next_before_id"] is None
            typed = (await api.get("/api/v1/security-events", params={"type": "TamperDetectionActivated"})).json()
            assert {e["charge_point_id"] for e in typed["events"]} == {"SEC-16", "SEC-201"}
            later = (await api.get("/api/v1/security-events", params={"since": "2026-11-30T10:01:30Z"})).json()
            assert [e["type"] for e in later["events"]] == ["VendorSpecificThing", "InvalidMessages"]
            assert (await api.get("/api/v1/security-events", params={"limit": 100000})).status_code == 422

            text = (await api.get("/metrics")).text
            assert counter(text, "TamperDetectionActivated", "true") == 2     # the retry is not counted
            assert counter(text, "StartupOfTheDevice", "true") == 1
            assert counter(text, "InvalidMessages", "false") == 1
            assert counter(text, "Other", "false") == 1
            assert "VendorSpecificThing" not in text
