# One image for every role of the CSMS. The role is the command:
#   docker run IMAGE serve     OCPP websocket gateway (9000) + HTTP API (8080)  [default]
#   docker run IMAGE ingest    MQTT -> TimescaleDB worker (/metrics + /healthz on 8081)
#   docker run IMAGE migrate   apply the SQL migrations, then exit
# Build from the repository root: docker build -t csms-telemetry .

# ---------------------------------------------------------------------------
# builder: install the project and its dependencies into a self-contained venv
# ---------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# Only what the build needs (see .dockerignore): metadata first, then the packages.
COPY pyproject.toml README.md ./
COPY csms/ csms/
COPY ingest/ ingest/
COPY schemas/ schemas/
# A regular (non-editable) install: the final stage has no /src.
RUN pip install --no-cache-dir .

# ---------------------------------------------------------------------------
# runtime: the venv only, no compilers, no build context, non-root user
# ---------------------------------------------------------------------------
# Same base as the builder: the venv's interpreter symlinks must resolve.
FROM python:3.11-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="csms-telemetry" \
      org.opencontainers.image.description="OCPP fleet telemetry backend: central system, ingest worker and migrations" \
      org.opencontainers.image.licenses="Apache-2.0"

# Fixed uid/gid so volume ownership is predictable across rebuilds and hosts.
# /var/lib/csms is the data directory (--data-dir): each gateway node's fsync'ed outbox
# (acknowledged charger data not yet committed by ingest), the generated API token and
# local state. It exists in the image, owned by csms, so a volume mounted there starts
# out writable for uid 10001 (Docker copies the ownership of an image directory into a
# new named volume; Kubernetes sets it with fsGroup).
RUN groupadd --system --gid 10001 csms \
    && useradd --system --uid 10001 --gid csms --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin csms \
    && install -d -o csms -g csms -m 0750 /app \
    && install -d -o csms -g csms -m 0700 /var/lib/csms

# The venv's python is a symlink to /usr/local/bin/python3.11, which the
# runtime base image has at the same path as the builder's.
COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    CSMS_DATA_DIR=/var/lib/csms \
    CSMS_HTTP_HOST=0.0.0.0 \
    CSMS_OCPP_HOST=0.0.0.0 \
    CSMS_OCPP_PORT=9000 \
    CSMS_HTTP_PORT=8080

WORKDIR /app
# Numeric so runtimes (e.g. runAsNonRoot) can verify it is not root.
USER 10001:10001

# 9000: OCPP websocket gateway, 8080: HTTP API (/healthz, /metrics, /api/v1).
# The ingest role listens on 8081 instead (set CSMS_HTTP_PORT=8081 for it so
# the health check below probes the right port).
EXPOSE 9000 8080

# slim images have no curl/wget: probe /healthz with the interpreter itself.
# urlopen raises on connection errors and on non-2xx answers -> exit code 1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CSMS_HTTP_PORT', '8080'), timeout=4)"]

# Raise the soft open-files limit to the hard limit before csms starts: every charger is
# one socket, and runtimes differ (recent containerd and Docker releases leave containers
# at the systemd default, soft 1024 / hard 524288; Kubernetes has no pod field for it).
# Raising soft up to hard needs no privilege. `exec` replaces the shell with csms (same
# PID), so SIGTERM (docker stop, pod termination) reaches csms itself and it drains.
ENTRYPOINT ["/bin/sh", "-c", "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null || echo \"csms: open-files limit stays at $(ulimit -n)\" >&2; exec csms \"$@\"", "csms"]
CMD ["serve"]
