"""The one typed, frozen settings object each process is started with.

Built once at start-up from ``CSMS_*`` environment variables and command-line flags
(flags win), validated, then passed down; inner code takes keyword arguments and
never reads the environment. Every limit and timeout carries its unit in its name.

The table of settings (flag, environment variable, default, unit) in the README is
generated from ``SETTINGS_FIELDS`` and checked by a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class SettingsError(ValueError):
    """A setting has a value that cannot be used."""


def _opt(default: Any, help_text: str, *, roles: str = "all", secret: bool = False) -> Any:
    """A setting; ``secret`` keeps its value out of the object's repr (and so out of any log of it)."""
    return dataclasses.field(default=default, repr=not secret, metadata={"help": help_text, "roles": roles})


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Process settings. Field names become ``--flag-name`` and ``CSMS_FIELD_NAME``."""

    # Where the data lives and how roles talk.
    database_url: str | None = _opt(None, "PostgreSQL+TimescaleDB URL; unset = embedded cluster in --data-dir",
                                    secret=True)
    mqtt_url: str | None = _opt(None, "MQTT broker URL (mqtt://host:port) for the bus; unset = in-process bus",
                                secret=True)
    data_dir: Path = _opt(Path(".csms"), "directory of the embedded database and local state")
    node_id: str = _opt(socket.gethostname(), "name of this node in events and metrics labels")
    log_level: str = _opt("INFO", "log level (DEBUG shows OCPP frames)")

    # OCPP websocket endpoint.
    ocpp_host: str = _opt("0.0.0.0", "address the OCPP websocket server listens on", roles="run,serve")  # noqa: S104
    ocpp_port: int = _opt(9000, "port of the OCPP websocket server", roles="run,serve")
    ocpp_path: str = _opt("/ocpp", "base path; chargers connect to <path>/<chargePointId>", roles="run,serve")
    ping_interval_s: float = _opt(60.0, "each connection is pinged once per interval, from one task for all of "
                                        "them (0 disables)", roles="run,serve")
    ping_timeout_s: float = _opt(60.0, "close the connection when a pong is this late", roles="run,serve")
    max_frame_bytes: int = _opt(262144, "largest OCPP frame accepted", roles="run,serve")
    open_timeout_s: float = _opt(10.0, "time allowed for a websocket handshake", roles="run,serve")
    heartbeat_interval_s: int = _opt(300, "Heartbeat interval sent in BootNotification", roles="run,serve")
    call_timeout_s: float = _opt(30.0, "time a CSMS-initiated call waits for its answer", roles="run,serve")
    boot_retry_interval_s: int = _opt(60, "interval sent with a Pending or Rejected BootNotification",
                                      roles="run,serve")
    max_queued_calls_per_connection: int = _opt(32, "CALLs a charger may pipeline before its socket is not read",
                                                roles="run,serve")
    max_queued_commands_per_charger: int = _opt(16, "operator commands waiting for one charger at most",
                                                roles="run,serve")
    command_connect_wait_s: float = _opt(2.0, "a command for a charger whose websocket handshake is admitted but "
                                              "not open yet waits this long for it, then 409",
                                         roles="run,serve")
    connection_drain_timeout_s: float = _opt(10.0, "after a disconnect, time the CALLs already received get to "
                                                   "be stored (they are not answered; the charger resends)",
                                             roles="run,serve")
    rejected_frame_log_interval_s: float = _opt(60.0, "per connection, rejected frames beyond the first few of "
                                                      "each interval are logged at DEBUG and counted in one INFO "
                                                      "line per interval", roles="run,serve")
    rejected_frame_log_burst: int = _opt(5, "rejected frames per connection logged at INFO one by one in each "
                                            "--rejected-frame-log-interval-s", roles="run,serve")
    max_connections_per_process: int = _opt(0, "chargers one gateway process holds at most, beyond them the "
                                                "handshake gets 503 + Retry-After (0 = what the open-files limit "
                                                "allows: soft limit - db_pool_max - 100)", roles="run,serve")
    websocket_max_queue_frames: int = _opt(4, "incoming websocket frames buffered per connection before the "
                                              "socket is not read (websockets max_queue)", roles="run,serve")

    # Charger identity and security profiles (1.6 Security Whitepaper; 2.0.1 Part 2 A00).
    security_profile: int = _opt(1, "endpoint security profile: 1 Basic auth, 2 TLS + Basic auth, 3 mutual TLS "
                                    "(0 = no charger authentication, for a lab only)", roles="run,serve")
    tls_cert_file: Path | None = _opt(None, "PEM certificate chain of the OCPP endpoint (profiles 2, 3)",
                                      roles="run,serve")
    tls_key_file: Path | None = _opt(None, "PEM private key of the OCPP endpoint (profiles 2, 3)", roles="run,serve")
    tls_client_ca_file: Path | None = _opt(None, "PEM CA bundle that signs charger certificates (profile 3)",
                                           roles="run,serve")
    onboard_unknown: bool = _opt(False, "admit unknown charge point ids, answering BootNotification Pending",
                                 roles="run,serve")
    free_vend: bool = _opt(False, "accept every id token without looking it up", roles="run,serve")
    tolerant_models: str = _opt("", "comma-separated vendor/model pairs whose schema violations are tolerated "
                                    "and flagged instead of refused", roles="run,serve")
    handshake_rate_per_source_per_s: float = _opt(50.0, "websocket handshakes per second per source address",
                                                  roles="run,serve")
    handshake_burst_per_source: int = _opt(500, "handshakes a source address may make in a burst",
                                           roles="run,serve")
    auth_failures_per_source_per_min: float = _opt(
        30.0, "failed charger authentications (and onboardings) per minute per source address, also the burst; "
              "beyond it handshakes get 429 before any password hashing", roles="run,serve")
    auth_failures_per_id_per_min: float = _opt(
        10.0, "failed authentications per minute per charge point id, also the burst; beyond it 429",
        roles="run,serve")
    kdf_workers: int = _opt(2, "threads that hash and verify charger passwords (Argon2id), off the event loop",
                            roles="run,serve")
    kdf_queue_max: int = _opt(128, "password checks waiting for a KDF thread at most; beyond it handshakes get "
                                   "503 with Retry-After", roles="run,serve")
    kdf_queue_max_per_source: int = _opt(16, "password checks of one source address waiting or running at most; "
                                             "beyond it 503 with Retry-After (one address cannot fill the queue)",
                                         roles="run,serve")
    onboard_max_pending: int = _opt(100, "unknown ids admitted by --onboard-unknown and still pending at most; "
                                         "beyond it unknown ids get 404 and no row", roles="run,serve")
    credential_secret: str | None = _opt(None, "server secret (at least 32 characters) under which generated "
                                               "charger passwords are stored as HMAC-SHA-256; the same on every "
                                               "node of one database; prefer the environment variable or "
                                               "--credential-secret-file; wins over the file",
                                         roles="run,serve,admin", secret=True)
    credential_secret_file: Path | None = _opt(None, "file holding that secret; unset = <data-dir>/credential-secret, "
                                                     "created with mode 0600 on first use", roles="run,serve,admin")
    slow_hash_count_interval_s: float = _opt(60.0, "how often csms_chargers_slow_hash (chargers still on an "
                                                   "Argon2id hash) is read from the database", roles="run,serve")

    # HTTP: API, /metrics, /healthz.
    http_host: str = _opt("127.0.0.1", "address of the HTTP API and /metrics")
    http_port: int = _opt(8080, "port of the HTTP API and /metrics")
    http_graceful_shutdown_s: float = _opt(5.0, "time open HTTP requests get to finish when the server stops")
    http_start_timeout_s: float = _opt(10.0, "time allowed for the HTTP server to start listening")
    api_token: str | None = _opt(None, "operator API bearer token; unset = generated into --data-dir", secret=True)
    ocpi_token: str | None = _opt(None, "token OCPI partners send (Authorization: Token …); unset = partner "
                                        "endpoints refuse everyone (the public open-data feed still works)",
                                  roles="run,serve", secret=True)
    ocpi_country_code: str | None = _opt(None, "OCPI country_code (ISO 3166-1 alpha-2) of the CPO party every "
                                               "location is published under; unset = each location's own "
                                               "country (IND → IN)", roles="run,serve")
    ocpi_party_id: str = _opt("CSM", "OCPI party_id of this CPO (3 characters)", roles="run,serve")

    # Database.
    db_pool_min: int = _opt(1, "minimum database connections in the pool")
    db_pool_max: int = _opt(10, "maximum database connections in the pool")
    db_connect_timeout_s: float = _opt(10.0, "database connect timeout")
    embedded_pg_port: int = _opt(0, "port of the embedded PostgreSQL (0 = pick a free one, then keep it)",
                                 roles="run,db-url")
    embedded_pg_start_timeout_s: float = _opt(60.0, "time allowed for the embedded PostgreSQL to start",
                                              roles="run")

    # Ingest batching.
    ingest_batch_max_rows: int = _opt(5000, "rows per ingest batch at most", roles="run,ingest")
    ingest_batch_max_delay_ms: int = _opt(200, "a batch is written at the latest this long after its first row "
                                               "(MQTT ingest; the in-process bus of csms run writes at once, "
                                               "group-committing what arrives meanwhile)", roles="run,ingest")
    ingest_db_pool_max: int = _opt(4, "database connections of an ingest writer at most", roles="run,ingest")
    ingest_retry_max_s: float = _opt(10.0, "longest back-off between retries of a batch or of the broker "
                                           "connection", roles="run,ingest")
    inprocess_bus_max_pending_rows: int = _opt(50000, "rows the in-process bus holds before publishers wait "
                                                      "(csms run without MQTT)", roles="run")
    # Why the two differ: ingest/writer_small.py (the statement saves the writer what it costs PostgreSQL).
    ingest_single_statement_max_rows: int = _opt(300, "an MQTT ingest batch of only samples and status changes "
                                                      "with at most this many rows is one statement, a larger "
                                                      "one goes by COPY", roles="run,ingest")
    inprocess_bus_single_statement_max_rows: int = _opt(5000, "the same limit for the in-process bus's writer "
                                                              "(csms run without MQTT)", roles="run")
    maintenance_interval_s: float = _opt(3600.0, "how often retention (and compression, where licensed) runs",
                                         roles="run,ingest")
    retention_days: int = _opt(0, "drop time-series chunks older than this (0 = keep)", roles="run,ingest")
    rollup_interval_s: float = _opt(60.0, "how often the per-port 15-minute state minutes used by utilization "
                                          "reports are brought up to date", roles="run,ingest")

    # MQTT bus and the node's outbox (the durability point when the bus is MQTT).
    outbox_max_bytes: int = _opt(1 << 30, "unconfirmed outbox bytes at most; beyond it data messages are refused "
                                          "(chargers retry them)", roles="run,serve")
    outbox_resend_after_s: float = _opt(30.0, "send unconfirmed outbox batches again after this long",
                                        roles="run,serve")
    outbox_commit_delay_ms: float = _opt(0.5, "while the outbox is busy (its last write ended less than this long "
                                               "ago) a write waits this long so that more answers share one fsync; "
                                               "an idle outbox writes at once (0 = never wait)", roles="run,serve")
    mqtt_max_in_flight: int = _opt(16, "outbox batches published to MQTT without their PUBACK yet",
                                   roles="run,serve")
    mqtt_coalesce_ms: float = _opt(10.0, "the outbox is sent to MQTT at most once per this interval, what was "
                                         "written meanwhile as one bundle (answers to chargers never wait for it; "
                                         "0 = send every batch at once)", roles="run,serve")
    ingest_max_in_flight_messages: int = _opt(1000, "bus messages an ingest worker holds unacknowledged (keep "
                                                    "at or below Mosquitto's max_inflight_messages)",
                                              roles="run,ingest")

    # Fleet: the registry of which node holds which charger, and commands across nodes.
    lease_s: float = _opt(15.0, "a gateway node's lease in the fleet registry: its chargers count as connected "
                                "while it renews it; once it has expired (the node died) any node records them "
                                "disconnected (reason node_lost)", roles="run,serve")
    lease_renew_s: float | None = _opt(None, "how often a node renews its lease (unset = lease_s / 3)",
                                       roles="run,serve")
    command_forward_margin_s: float = _opt(5.0, "a command for a charger held by another node waits "
                                                "call_timeout_s plus this for that node's reply, then 504",
                                           roles="run,serve")
    command_dedupe_ttl_s: float = _opt(600.0, "a node remembers each command it received from another node this "
                                              "long, so that a broker redelivery is never sent to the charger "
                                              "twice (must exceed call_timeout_s + command_forward_margin_s)",
                                       roles="run,serve")
    command_dedupe_max_entries: int = _opt(100000, "commands from other nodes remembered at most; beyond it new "
                                                   "ones get 429 until older ones are past their deadline",
                                           roles="run,serve")

    # Several gateway processes on one host (csms run|serve --workers N).
    workers: int = _opt(1, "gateway worker processes sharing the OCPP and HTTP ports (SO_REUSEPORT) under a "
                           "supervisor that restarts them; 1 = this process serves alone", roles="run,serve")
    metrics_port_base: int = _opt(8090, "with --workers N > 1: worker i serves its own /metrics and /healthz on "
                                        "this port + i (Prometheus scrapes each), csms run's ingest process on "
                                        "this port + N", roles="run,serve")
    worker_start_timeout_s: float = _opt(60.0, "time a worker gets to become ready (database, broker, ports); "
                                               "a restarted one that is not ready by then is killed and retried",
                                         roles="run,serve")
    worker_restart_backoff_min_s: float = _opt(0.5, "a worker that exits is restarted after this, doubled for each "
                                                    "crash in a row", roles="run,serve")
    worker_restart_backoff_max_s: float = _opt(30.0, "longest wait before a worker is restarted; a worker that "
                                                     "ran longer than this counts as healthy again",
                                               roles="run,serve")
    drain_rate_per_s: float = _opt(500.0, "on SIGTERM a gateway process closes at most this many chargers per "
                                          "second with 1001, so they reconnect elsewhere without a herd; the "
                                          "closes use at most half of --shutdown-timeout-s, the rest are then "
                                          "closed at once (0 = all at once)", roles="run,serve")
    embedded_mqtt_port: int = _opt(0, "port of the embedded Mosquitto of csms run --workers N (0 = pick a free "
                                      "one, then keep it)", roles="run")
    embedded_mqtt_start_timeout_s: float = _opt(10.0, "time allowed for the embedded Mosquitto to listen",
                                                roles="run")

    # Certificates and security events (issue 14 items 4-5; 2.0.1 A02-A04, M03-M05; 1.6 Security Whitepaper).
    certificate_ca_cert_file: Path | None = _opt(None, "PEM cert of the operator CA signing charger CSRs; unset = "
                                                       "SignCertificate Rejected (no CA is made)", roles="run,serve")
    certificate_ca_key_file: Path | None = _opt(None, "PEM private key (unencrypted) of that CA", roles="run,serve")
    certificate_organisation: str = _opt("", "organizationName a CSR must carry (needed with a CA)", roles="run,serve")
    certificate_min_rsa_bits: int = _opt(2048, "smallest RSA key signed (EC: P-256, P-384)", roles="run,serve")
    certificate_validity_s: float = _opt(31536000.0, "validity of a signed charger certificate", roles="run,serve")
    certificate_renewal_lead_time_s: float = _opt(2592000.0, "renewal is triggered this long before expiry",
                                                  roles="run,serve")
    certificate_renewal_check_interval_s: float = _opt(3600.0, "renewal check (and expiry gauge) interval; one "
                                                               "trigger per charger per interval", roles="run,serve")
    certificate_renewal_rate_per_s: float = _opt(10.0, "renewal triggers per second at most", roles="run,serve")
    certificate_sign_queue_max: int = _opt(1000, "CSRs waiting to be signed at most (then Rejected)", roles="run,serve")

    # Key rotation of charger passwords (issue 14 item 3; 2.0.1 A01, 1.6 AuthorizationKey).
    rotation_campaign_per_s: float = _opt(5.0, "campaign rotations per second at most (all nodes)", roles="run,serve")
    rotation_poll_s: float = _opt(1.0, "campaign claim, stale-rotation sweep and metrics interval", roles="run,serve")

    # Process lifecycle.
    shutdown_timeout_s: float = _opt(10.0, "time allowed for an orderly shutdown")
    event_loop: str = _opt("asyncio", "event loop of the long-running roles: asyncio or uvloop")  # issue 15

    def __post_init__(self) -> None:
        for name in ("ocpp_port", "http_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise SettingsError(f"{name} must be a TCP port, got {port}")
        if not self.ocpp_path.startswith("/"):
            raise SettingsError(f"ocpp_path must start with '/', got {self.ocpp_path!r}")
        if self.max_frame_bytes < 1024:
            raise SettingsError("max_frame_bytes must be at least 1024")
        if self.db_pool_min < 1 or self.db_pool_max < self.db_pool_min:
            raise SettingsError("need 1 <= db_pool_min <= db_pool_max")
        if (self.ingest_batch_max_rows < 1 or self.ingest_batch_max_delay_ms < 0
                or not 0 <= self.mqtt_coalesce_ms <= 1000 or not 0 <= self.outbox_commit_delay_ms <= 100):
            raise SettingsError("ingest batch limits must be positive, mqtt_coalesce_ms within 0–1000, "
                                "outbox_commit_delay_ms within 0–100")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise SettingsError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.security_profile not in (0, 1, 2, 3):
            raise SettingsError(f"security_profile must be 0, 1, 2 or 3, got {self.security_profile}")
        if self.security_profile >= 2 and (self.tls_cert_file is None or self.tls_key_file is None):
            raise SettingsError("security profiles 2 and 3 need tls_cert_file and tls_key_file")
        if self.security_profile == 3 and self.tls_client_ca_file is None:
            raise SettingsError("security profile 3 needs tls_client_ca_file to verify charger certificates")
        if (self.auth_failures_per_source_per_min <= 0 or self.auth_failures_per_id_per_min <= 0
                or self.kdf_workers < 1 or self.kdf_queue_max < 0 or self.kdf_queue_max_per_source < 1
                or self.onboard_max_pending < 1):
            raise SettingsError("auth failure budgets, kdf_workers, kdf_queue_max_per_source and "
                                "onboard_max_pending must be positive, kdf_queue_max at least 0")
        if (self.command_connect_wait_s < 0 or self.connection_drain_timeout_s <= 0
                or self.rejected_frame_log_interval_s <= 0 or self.rejected_frame_log_burst < 0):
            raise SettingsError("command_connect_wait_s and rejected_frame_log_burst must be at least 0, "
                                "connection_drain_timeout_s and rejected_frame_log_interval_s positive")
        if self.max_connections_per_process < 0:
            raise SettingsError("max_connections_per_process must be at least 0 (0 = from the open-files limit)")
        if (self.websocket_max_queue_frames < 1 or self.ingest_db_pool_max < 1 or self.ingest_retry_max_s <= 0
                or self.inprocess_bus_max_pending_rows < 1 or self.maintenance_interval_s <= 0
                or self.ingest_single_statement_max_rows < 0 or self.inprocess_bus_single_statement_max_rows < 0
                or self.http_graceful_shutdown_s < 0 or self.http_start_timeout_s <= 0):
            raise SettingsError("websocket_max_queue_frames, ingest_db_pool_max, ingest_retry_max_s, "
                                "inprocess_bus_max_pending_rows, maintenance_interval_s and http_start_timeout_s "
                                "must be positive, http_graceful_shutdown_s and the single-statement row limits "
                                "at least 0")
        if self.lease_s <= 0 or (self.lease_renew_s is not None and not 0 < self.lease_renew_s < self.lease_s):
            raise SettingsError("lease_s must be positive and lease_renew_s between 0 and lease_s")
        if (self.command_forward_margin_s < 0 or self.command_dedupe_max_entries < 1
                or self.command_dedupe_ttl_s <= self.call_timeout_s + self.command_forward_margin_s):
            raise SettingsError("command_forward_margin_s must be at least 0, command_dedupe_max_entries positive, "
                                "and command_dedupe_ttl_s above call_timeout_s + command_forward_margin_s (a "
                                "command redelivered after it is forgotten must be past its deadline)")
        if not 1 <= self.workers <= 64:
            raise SettingsError(f"workers must be between 1 and 64, got {self.workers}")
        if not 1 <= self.metrics_port_base <= 65535 - self.workers or not 0 <= self.embedded_mqtt_port <= 65535:
            raise SettingsError("metrics_port_base + workers and embedded_mqtt_port must be TCP ports")
        if (self.worker_start_timeout_s <= 0 or self.worker_restart_backoff_min_s <= 0
                or self.worker_restart_backoff_max_s < self.worker_restart_backoff_min_s
                or self.drain_rate_per_s < 0 or self.embedded_mqtt_start_timeout_s <= 0):
            raise SettingsError("worker_start_timeout_s, worker_restart_backoff_min_s and "
                                "embedded_mqtt_start_timeout_s must be positive, worker_restart_backoff_max_s at "
                                "least the minimum, drain_rate_per_s at least 0")
        if self.api_token is not None and len(self.api_token) < 16:
            raise SettingsError("api_token must be at least 16 characters")
        if self.credential_secret is not None and len(self.credential_secret.strip()) < 32:
            raise SettingsError("credential_secret must be at least 32 characters")
        if self.slow_hash_count_interval_s <= 0:
            raise SettingsError("slow_hash_count_interval_s must be positive")


def tolerant_pairs(settings: Settings) -> frozenset[tuple[str, str]]:
    """``tolerant_models`` as (vendor, model) pairs, compared case-insensitively."""
    pairs = set()
    for item in settings.tolerant_models.split(","):
        vendor, sep, model = item.strip().partition("/")
        if sep and vendor and model:
            pairs.add((vendor.strip().lower(), model.strip().lower()))
    return frozenset(pairs)


SETTINGS_FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)
ENV_PREFIX = "CSMS_"


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _field_type(field: dataclasses.Field[Any]) -> str:
    return str(field.type).replace("typing.", "")


def _convert(field: dataclasses.Field[Any], raw: str) -> Any:
    kind = _field_type(field)
    if "None" in kind and raw == "":
        return None
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            if raw.lower() in {"1", "true", "yes", "on"}:
                return True
            if raw.lower() in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind.startswith("Path"):
            return Path(raw)
    except ValueError as exc:
        raise SettingsError(f"{field.name}: cannot read {raw!r} as {kind}") from exc
    return raw


def add_setting_flags(parser: argparse.ArgumentParser, *, role: str) -> None:
    """Add one flag per setting that applies to ``role``; defaults stay unset (None)."""
    for field in SETTINGS_FIELDS:
        roles = field.metadata["roles"]
        if roles != "all" and role not in roles.split(","):
            continue
        if _field_type(field) == "bool":
            parser.add_argument(flag_name(field.name), dest=field.name, action="store_const", const="true",
                                default=None,
                                help=f"{field.metadata['help']} (env {env_name(field.name)}=true)")
            continue
        parser.add_argument(
            flag_name(field.name),
            dest=field.name,
            default=None,
            metavar=field.name.upper().removesuffix("_URL") if field.name.endswith("_url") else None,
            help=f"{field.metadata['help']} (env {env_name(field.name)}, default {field.default!s})",
        )


def load_settings(*, environ: Mapping[str, str], cli: Mapping[str, str | None] | None = None) -> Settings:
    """Build the settings: defaults, then ``CSMS_*`` environment, then flags."""
    values: dict[str, Any] = {}
    cli = cli or {}
    for field in SETTINGS_FIELDS:
        raw = cli.get(field.name)
        if raw is None:
            raw = environ.get(env_name(field.name))
        if raw is not None:
            values[field.name] = _convert(field, raw)
    return Settings(**values)


if __name__ == "__main__":  # pragma: no cover
    import sys

    from schemas.settings_table import markdown_table, update_readme

    if "--update-readme" in sys.argv:
        update_readme(Path(__file__).resolve().parent.parent / "README.md")
    else:
        print(markdown_table())
