"""Building the gateway of a process from its settings (TLS, handshake policy, services, limits)."""

from __future__ import annotations

import functools
import resource
import ssl

import asyncpg
from prometheus_client import CollectorRegistry

from csms.gateway.handshake import HandshakePolicy
from csms.gateway.metrics import GatewayMetrics
from csms.gateway.server import Gateway, GatewayLimits
from csms.run.workers import chargers_per_worker
from csms.security.secret import CredentialSecret
from csms.store.chargers import allocate_connection_epoch
from csms.store.services import DbServices
from schemas.bus import Bus
from schemas.settings import Settings, tolerant_pairs


def build_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS for security profiles 2 and 3: TLS 1.2 or newer only (A00.FR.313–315), no compression."""
    if settings.security_profile < 2:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    assert settings.tls_cert_file is not None
    assert settings.tls_key_file is not None
    ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.security_profile == 3:
        assert settings.tls_client_ca_file is not None
        ctx.verify_mode = ssl.CERT_REQUIRED  # unknown, invalid or expired certificates end the handshake
        ctx.load_verify_locations(settings.tls_client_ca_file)
    return ctx


def credential_secret(s: Settings) -> CredentialSecret:
    """Where this process finds the secret of generated charger passwords (csms.security.secret)."""
    return CredentialSecret(secret=s.credential_secret,
                            file=s.credential_secret_file or s.data_dir / "credential-secret", owner=s.node_id)


def build_gateway(s: Settings, *, pool: asyncpg.Pool, bus: Bus, metrics: CollectorRegistry,
                  validate_responses: bool = False, reuse_port: bool = False) -> Gateway:
    """The OCPP gateway of a ``run``/``serve`` process, with its handshake policy and services."""
    gateway_metrics = GatewayMetrics.create(metrics)
    policy = HandshakePolicy(pool=pool, endpoint_profile=s.security_profile, onboard_unknown=s.onboard_unknown,
                             rate_per_s=s.handshake_rate_per_source_per_s, burst=s.handshake_burst_per_source,
                             auth_failures_per_source_per_min=s.auth_failures_per_source_per_min,
                             auth_failures_per_id_per_min=s.auth_failures_per_id_per_min,
                             kdf_workers=s.kdf_workers, kdf_queue_max=s.kdf_queue_max,
                             kdf_queue_max_per_source=s.kdf_queue_max_per_source,
                             onboard_max_pending=s.onboard_max_pending, credentials=credential_secret(s),
                             slow_hash_count_interval_s=s.slow_hash_count_interval_s, registry=metrics)
    services = DbServices(pool=pool, heartbeat_interval_s=s.heartbeat_interval_s,
                          boot_retry_interval_s=s.boot_retry_interval_s, free_vend=s.free_vend)
    limits = GatewayLimits(ping_interval_s=s.ping_interval_s, ping_timeout_s=s.ping_timeout_s,
                           max_frame_bytes=s.max_frame_bytes, open_timeout_s=s.open_timeout_s,
                           call_timeout_s=s.call_timeout_s,
                           max_queued_calls=s.max_queued_calls_per_connection,
                           max_queued_commands=s.max_queued_commands_per_charger,
                           command_connect_wait_s=s.command_connect_wait_s,
                           connection_drain_timeout_s=s.connection_drain_timeout_s,
                           rejected_frame_log_interval_s=s.rejected_frame_log_interval_s,
                           rejected_frame_log_burst=s.rejected_frame_log_burst,
                           websocket_max_queue_frames=s.websocket_max_queue_frames,
                           max_connections=max_connections(s))
    return Gateway(host=s.ocpp_host, port=s.ocpp_port, base_path=s.ocpp_path, node_id=s.node_id, bus=bus,
                   metrics=gateway_metrics, policy=policy, services=services, limits=limits,
                   ssl_context=build_ssl_context(s), tolerant_models=tolerant_pairs(s),
                   validate_responses=validate_responses,
                   connection_epochs=functools.partial(allocate_connection_epoch, pool),
                   reuse_port=reuse_port, drain_rate_per_s=s.drain_rate_per_s)


def max_connections(s: Settings) -> int:
    """The chargers this process may hold: the setting, or what its open-files limit leaves."""
    if s.max_connections_per_process > 0:
        return s.max_connections_per_process
    return chargers_per_worker(resource.getrlimit(resource.RLIMIT_NOFILE)[0], s)
