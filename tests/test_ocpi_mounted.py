"""The OCPI routes are part of the running central system's HTTP API."""

from __future__ import annotations

import httpx
import pytest

from tests.central import running_central

pytestmark = pytest.mark.integration


async def test_open_data_is_public_and_partner_endpoints_need_the_ocpi_token(db_url: str) -> None:
    async with running_central(db_url, ocpi_token="partner-token-0123456789") as central, \
            httpx.AsyncClient(base_url=central.http_base) as http:
        public = await http.get("/open-data/ocpi/locations")
        assert public.status_code == 200
        assert public.json()["status_code"] == 1000
        assert (await http.get("/ocpi/cpo/2.2.1/locations")).status_code == 401
        partner = await http.get("/ocpi/cpo/2.2.1/locations",
                                 headers={"Authorization": "Token partner-token-0123456789"})
        assert partner.status_code == 200
        assert (await http.get("/openapi.json")).json()["info"]["title"] == "CSMS telemetry API"
