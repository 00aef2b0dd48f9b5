"""Exceptions of the ``csms`` package.

::

    CsmsError                      internal errors; never sent to a charger
    ├── EmbeddedDatabaseError      the private PostgreSQL cluster cannot be set up or started
    ├── ConfigurationError         settings that cannot work together (also a ValueError)
    └── ChargerCommandError        an operator command could not be delivered or answered
        ├── ChargerOfflineError    the charger has no live connection, or it ended (HTTP 409)
        ├── ChargerBusyError       too many commands are already waiting for the charger (HTTP 429)
        └── ChargerTimeoutError    the charger did not answer in time (HTTP 504)
            └── ChargerNotReadingError  a command could not even be written: the charger does
                                        not read its socket, so the others fail at once

OCPP wire errors (the CALLERROR codes sent to chargers) live separately in
``csms.ocpp.errors``; they describe what went wrong in a charger's message, not in us.
"""

from __future__ import annotations


class CsmsError(Exception):
    """Root of the internal exceptions of the central system."""


class EmbeddedDatabaseError(CsmsError):
    """The embedded PostgreSQL+TimescaleDB cluster could not be set up or started."""


class ConfigurationError(CsmsError, ValueError):
    """Settings that cannot work together."""


class ChargerCommandError(CsmsError):
    """An operator command could not be delivered to a charger or answered by it."""


class ChargerOfflineError(ChargerCommandError):
    """The charger has no live connection on this node."""


class ChargerBusyError(ChargerCommandError):
    """The charger's command queue is full."""


class ChargerTimeoutError(ChargerCommandError):
    """The charger did not answer within the call timeout."""


class ChargerNotReadingError(ChargerTimeoutError):
    """A command could not be written to the socket within the call timeout (the charger is not
    reading); until that write completes, further commands fail at once."""
