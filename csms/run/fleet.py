"""Composing a gateway process's part of the fleet: registry, commands across nodes, the node link.

Every ``run``/``serve`` process (and every worker of ``--workers N``, each with its own node id) takes
part: its connections are in the fleet registry, its API reaches chargers on the other nodes. Commands
across nodes need the MQTT bus (``--mqtt-url``); without it (``csms run`` with the in-process bus) the
process is alone and reaches only its own chargers, as before.

Start: ``start_fleet`` after the gateway is built and before it accepts chargers (what a previous
process with the same node id left is reported first). Stop: ``Fleet.stop`` after the gateway has
closed its chargers and before the bus closes (the last disconnects are written, the lease released).
"""

from __future__ import annotations

import asyncpg
from prometheus_client import CollectorRegistry

from csms.bus.node_link import MqttNodeLink
from csms.gateway.fleet import FleetDirectory, FleetMetrics, lease_renew_interval_s
from csms.gateway.node_messages import DedupeCache
from csms.gateway.remote import CommandRouter
from csms.gateway.server import Gateway
from schemas.bus import Bus
from schemas.settings import Settings


class Fleet:
    def __init__(self, directory: FleetDirectory, router: CommandRouter, link: MqttNodeLink | None) -> None:
        self.directory = directory
        self.router = router
        self.link = link

    async def stop(self, *, timeout_s: float) -> None:
        await self.directory.stop(timeout_s=timeout_s)
        await self.router.close()
        if self.link is not None:
            await self.link.close()


async def start_fleet(s: Settings, *, pool: asyncpg.Pool, bus: Bus, gateway: Gateway,
                      metrics: CollectorRegistry) -> Fleet:
    fleet_metrics = FleetMetrics.create(metrics)
    directory = FleetDirectory(pool=pool, node_id=s.node_id, bus=bus, lease_s=s.lease_s,
                               lease_renew_s=lease_renew_interval_s(s.lease_s, s.lease_renew_s),
                               metrics=fleet_metrics)
    router = CommandRouter(holder=gateway, directory=directory, node_id=s.node_id, call_timeout_s=s.call_timeout_s,
                           margin_s=s.command_forward_margin_s,
                           dedupe=DedupeCache(ttl_s=s.command_dedupe_ttl_s, max_entries=s.command_dedupe_max_entries),
                           metrics=fleet_metrics, log_interval_s=s.rejected_frame_log_interval_s,
                           log_burst=s.rejected_frame_log_burst)

    def close_stale(charge_point_id: str, epoch: int) -> None:
        gateway.close_older(charge_point_id, epoch + 1)

    directory.local = gateway.live.all
    directory.on_stale = close_stale
    directory.on_takeover = router.request_close
    # Connect and publish timeouts as the event bus's (csms/bus/mqtt.py): the same broker.
    link = MqttNodeLink(url=s.mqtt_url, node_id=s.node_id, handler=router.on_message) if s.mqtt_url else None
    router.link = link
    gateway.attach_fleet(directory, router)
    await directory.start()
    if link is not None:
        await link.start()
    return Fleet(directory, router, link)
