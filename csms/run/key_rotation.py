"""Building a gateway process's part of key rotation campaigns from its settings (issue 14 item 3)."""

from __future__ import annotations

import asyncpg
from prometheus_client import CollectorRegistry

from csms.common.errors import ConfigurationError
from csms.gateway.rotation import RotationCampaigns
from csms.gateway.server import Gateway
from schemas.settings import Settings

# A rotation still 'sending'/'sent' this long after every wait for its answer has ended (call_timeout_s, plus
# the forwarding margin across nodes) was left by a process that stopped: any node records it a timeout.
_SWEEP_SLACK_S = 30.0


def start_key_rotation(s: Settings, *, pool: asyncpg.Pool, gateway: Gateway,
                       metrics: CollectorRegistry) -> RotationCampaigns:
    """Campaign rotations of this node (claimed at the campaign's rate shared by every node), started."""
    if s.rotation_campaign_per_s <= 0 or s.rotation_poll_s <= 0:
        raise ConfigurationError("rotation_campaign_per_s and rotation_poll_s must be positive")
    campaigns = RotationCampaigns(pool=pool, gateway=gateway, secret=gateway.credentials, node_id=s.node_id,
                                  max_rate_per_s=s.rotation_campaign_per_s, poll_s=s.rotation_poll_s,
                                  sweep_after_s=s.call_timeout_s + s.command_forward_margin_s + _SWEEP_SLACK_S,
                                  registry=metrics)
    campaigns.start()
    return campaigns
