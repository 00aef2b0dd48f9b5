"""Central system: OCPP websocket gateway, pure protocol core, operator HTTP API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("csms-telemetry")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
