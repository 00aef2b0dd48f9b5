"""``csms run --demo``: the embedded system plus a small simulated fleet in the same process.

Three public locations in different time zones (Asia/Kolkata, America/Los_Angeles,
Europe/Berlin), 15 chargers mixing OCPP 1.6J and 2.0.1, AC and DC, registered through the
registry code; their simulated chargers are tasks of this process that connect to our own
OCPP endpoint over loopback, like any charger.

History: on first start (no data of the demo chargers yet) each charger powers on
``history_days`` in the past. After its BootNotification is accepted it replays that time in
fast-forward through the OCPP interface — statuses, sessions and meter samples carry the
charger-side timestamps of when they happened, the central system stores them like any
late-delivered data — and then goes on in real time. Reports and dashboards have days of
data at once. Connection events (connect/disconnect) are recorded by the central system at
the time they really happen, so uptime over the backfilled days has no connectivity data.

Stop order: the fleet first (its chargers close their connections), then the central system
in its own order (gateway, HTTP, bus, ingest, database).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from csms.common.errors import ConfigurationError
from csms.simulate.config import Behaviour, FleetShape, LinkOptions
from csms.simulate.fleet import plan_fleet, token_pool
from csms.simulate.register import register_fleet, stored_registers
from csms.simulate.runner import FleetRunner

if TYPE_CHECKING:
    from csms.run.central import CentralSystem

logger = logging.getLogger(__name__)

DEMO_SHAPE = FleetShape(count=15, mix=(("1.6", 0.5), ("2.0.1", 0.5)), evses=(1, 3), dc_share=0.3,
                        id_prefix="DEMO-", seed=7, tokens=12, token_prefix="DEMOTAG",  # noqa: S106 - a name prefix
                        locations=3)
DEMO_BEHAVIOUR = Behaviour(
    meter_interval_s=15.0, catch_up_meter_interval_s=900.0, catch_up_threshold_s=1800.0,
    first_plug_in_s=(0.0, 90.0), session_s=(1200.0, 5400.0), idle_s=(1800.0, 12600.0),
    fault_rate_per_h=0.01, fault_s=(300.0, 1800.0), offline_rate_per_h=0.02, offline_s=(30.0, 120.0))
DEMO_PASSWORD = "demo-charger-password"  # noqa: S105 - a lab fleet on loopback; printed on start


class DemoFleet:
    def __init__(self, system: CentralSystem, *, history_days: float = 2.0) -> None:
        self.system = system
        self.history_days = max(0.0, history_days)
        self.runner: FleetRunner | None = None

    async def start_all(self) -> None:
        s = self.system.settings
        if s.security_profile >= 2:
            raise ConfigurationError("--demo runs its chargers over ws:// (security profile 0 or 1)")
        await self.system.start()
        await self.start()

    async def stop_all(self) -> None:
        try:
            await self.stop()
        finally:
            await self.system.stop()

    async def start(self) -> None:
        pool = self.system.pool
        gateway = self.system.gateway
        assert pool is not None
        assert gateway is not None
        ids = [p.id for p in plan_fleet(DEMO_SHAPE)]
        has_history = await pool.fetchval("SELECT EXISTS (SELECT 1 FROM transactions WHERE charge_point_id = "
                                          "ANY($1::text[]))", ids)
        days = 0.0 if has_history else self.history_days
        now = time.time()
        start = now - days * 86400.0
        await register_fleet(pool, DEMO_SHAPE, password=DEMO_PASSWORD, public=True,
                             operational_since=datetime.fromtimestamp(start, UTC).replace(microsecond=0))
        host = self.system.settings.ocpp_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - the wildcard is not an address
        url = f"ws://{host}:{gateway.port}{self.system.settings.ocpp_path.rstrip('/')}"
        options = LinkOptions(url=url, password=DEMO_PASSWORD, connect_rate_per_s=20.0, call_timeout_s=30.0)
        self.runner = FleetRunner(profiles=plan_fleet(DEMO_SHAPE), behaviour=DEMO_BEHAVIOUR, options=options,
                                  tokens=token_pool(DEMO_SHAPE), seed=DEMO_SHAPE.seed, start=start,
                                  initial_registers=await stored_registers(pool, ids))
        self.runner.start()
        print(self.banner(days), flush=True)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.stop(timeout_s=self.system.settings.shutdown_timeout_s, finish_sessions=True)
            self.runner = None

    def banner(self, days: float) -> str:
        from csms.run.central import load_or_create_api_token

        s = self.system.settings
        assert self.system.http is not None
        http = f"http://{s.http_host}:{self.system.http.port}"
        token = load_or_create_api_token(s)
        profiles = plan_fleet(DEMO_SHAPE)
        v16 = sum(1 for p in profiles if p.version == "1.6")
        today = datetime.now(UTC).date()
        since = (today - timedelta(days=max(1, round(days)))).isoformat()
        auth = f'-H "Authorization: Bearer {token}"'
        history = f"writing {days:g} day(s) of history in fast-forward, then live" if days else "live"
        first = profiles[0].id
        lines = [
            f"csms demo: {len(profiles)} simulated chargers ({v16} × OCPP 1.6J, {len(profiles) - v16} × 2.0.1) at "
            f"3 locations (Asia/Kolkata, America/Los_Angeles, Europe/Berlin); {history}",
            f"  live connections  curl {auth} {http}/api/v1/connections",
            f"  sessions          curl {auth} '{http}/api/v1/transactions?limit=20'",
            f"  one charger       curl {auth} {http}/api/v1/charge-points/{first}/state",
            f"  utilization       curl {auth} '{http}/api/v1/reporting/stations/{profiles[0].location_id}/"
            f"utilization?from={since}T00:00:00Z&to={today.isoformat()}T23:59:59Z'",
            f"  port uptime       curl {auth} '{http}/api/v1/reporting/ports/{first}/1/uptime?method=generic"
            f"&from={since}T00:00:00Z&to={today.isoformat()}T23:59:59Z'",
            f"  open data (OCPI)  curl {http}/open-data/ocpi/locations",
            f"  metrics           {http}/metrics      API docs  {http}/docs",
            f"  database          psql \"$(csms db-url --data-dir {s.data_dir})\"  (Grafana: deploy/grafana/)",
            f"  operator token    {token}",
            f"  chargers          ws://…{s.ocpp_path.rstrip('/')}/DEMO-000NN, Basic-auth password {DEMO_PASSWORD}",
        ]
        return "\n".join(lines)
