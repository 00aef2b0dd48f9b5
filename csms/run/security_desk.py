"""Building the certificate and security-event desk of a gateway process from its settings."""

from __future__ import annotations

import asyncpg
from prometheus_client import CollectorRegistry

from csms.common.errors import ConfigurationError
from csms.gateway.certificates import CertificateMetrics, SecurityDesk
from csms.gateway.server import Gateway
from csms.security.ca import OperatorCa
from csms.store.services import DbServices
from schemas.settings import Settings


def start_security_desk(s: Settings, *, pool: asyncpg.Pool, gateway: Gateway,
                        metrics: CollectorRegistry) -> SecurityDesk:
    """The desk, attached to the gateway's handler services and started (its tasks run until ``close``)."""
    if (s.certificate_ca_cert_file is None) != (s.certificate_ca_key_file is None):
        raise ConfigurationError("certificate_ca_cert_file and certificate_ca_key_file go together")
    ca = None
    if s.certificate_ca_cert_file is not None and s.certificate_ca_key_file is not None:
        if not s.certificate_organisation:
            raise ConfigurationError("a CA (certificate_ca_cert_file) needs certificate_organisation: the "
                                     "organizationName a charger's CSR must carry")
        ca = OperatorCa.load(s.certificate_ca_cert_file, s.certificate_ca_key_file)
    if (s.certificate_validity_s <= 0 or s.certificate_renewal_lead_time_s < 0
            or s.certificate_renewal_check_interval_s <= 0 or s.certificate_renewal_rate_per_s <= 0
            or s.certificate_sign_queue_max < 1 or s.certificate_min_rsa_bits < 1024):
        raise ConfigurationError("certificate validity, renewal interval and rate, and sign queue must be "
                                 "positive, the lead time at least 0, the RSA minimum at least 1024 bits")
    desk = SecurityDesk(pool=pool, gateway=gateway, metrics=CertificateMetrics.create(metrics), ca=ca,
                        organisation=s.certificate_organisation, min_rsa_bits=s.certificate_min_rsa_bits,
                        validity_s=s.certificate_validity_s,
                        renewal_lead_time_s=s.certificate_renewal_lead_time_s,
                        renewal_check_interval_s=s.certificate_renewal_check_interval_s,
                        renewal_rate_per_s=s.certificate_renewal_rate_per_s,
                        sign_queue_max=s.certificate_sign_queue_max)
    # The gateway hands its services to every connection's handlers; DbServices has a ``security`` slot.
    # Gateway has no setter for it (the one private access, until build_gateway takes the desk).
    services = gateway._services
    if isinstance(services, DbServices):
        services.security = desk
    gateway.client_certificate_seen = desk.record_presented
    desk.start()
    return desk
