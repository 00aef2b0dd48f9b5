"""OCPP 2.1: the answer and the events for every charger-initiated message.

2.1 shares the 2.0.1 messages a charger sends for boot, status, authorisation,
transactions and meter values (each validated against the 2.1 schema by the session);
the messages new in 2.1 are in ``handlers_v21_only``, registered here only, so that none
of them is reachable on a 2.0.1 connection.
"""

from __future__ import annotations

from csms.ocpp import handlers_v21_only, handlers_v201
from csms.ocpp.handlers_common import Handler
from csms.ocpp.validation import known_actions

HANDLERS: dict[str, Handler] = {
    **{action: handler for action, handler in handlers_v201.HANDLERS.items() if action in known_actions("2.1")},
    **handlers_v21_only.HANDLERS,
}

# 2.1 SEND messages (no response, never answered; 2.1 Part 4 §4.2.4).
SEND_ACTIONS = handlers_v21_only.SEND_ACTIONS

# Allowed before BootNotification is Accepted (B02.FR.09 in 2.1 as in 2.0.1; R33).
PRE_BOOT_ACTIONS = handlers_v201.PRE_BOOT_ACTIONS
