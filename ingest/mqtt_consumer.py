"""The one adapter around aiomqtt for consuming with acknowledge-after-commit.

aiomqtt 2.5 acknowledges QoS 1 messages as soon as they arrive and has no public API
for manual acknowledgement (empicano/aiomqtt#345). The known workaround is paho's
manual-ack mode through the wrapped client: ``manual_ack_set(True)`` before
subscribing, then ``ack(mid, qos)`` once the rows are committed. A message that was
received but never acknowledged is delivered again on the next connection of the
same persistent session. This module is the only place that touches ``_client``,
so the aiomqtt v3 change (which adds manual acks) touches one file.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiomqtt


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None


def parse_mqtt_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in {"mqtt", "tcp"}:
        raise ValueError(f"MQTT URL must start with mqtt://, got {url!r}")
    if not parts.hostname:
        raise ValueError(f"MQTT URL has no host: {url!r}")
    return BrokerAddress(parts.hostname, parts.port or 1883, parts.username, parts.password)


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    topic: str
    payload: bytes
    mid: int
    qos: int


class AckingConsumer:
    """A persistent-session subscriber whose messages are acknowledged explicitly."""

    def __init__(self, *, url: str, client_id: str, topic: str, max_queued_messages: int,
                 keepalive_s: int = 30) -> None:
        addr = parse_mqtt_url(url)
        self._client = aiomqtt.Client(
            addr.host, addr.port, username=addr.username, password=addr.password,
            identifier=client_id, clean_session=False, keepalive=keepalive_s,
            protocol=aiomqtt.ProtocolVersion.V311,
            # Bounded: with manual acks the broker stops sending once its in-flight window
            # for this client is full, so this queue never holds more than that window.
            max_queued_incoming_messages=max_queued_messages,
        )
        self._topic = topic

    async def __aenter__(self) -> AckingConsumer:
        self._client._client.manual_ack_set(True)
        await self._client.__aenter__()
        await self._client.subscribe(self._topic, qos=1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.__aexit__(None, None, None)

    async def messages(self) -> AsyncIterator[ReceivedMessage]:
        async for msg in self._client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else str(msg.payload).encode()
            yield ReceivedMessage(topic=str(msg.topic), payload=bytes(payload), mid=msg.mid, qos=msg.qos)

    def pending(self) -> int:
        return len(self._client.messages)

    def ack(self, message: ReceivedMessage) -> None:
        """Acknowledge a message whose rows are committed."""
        if message.qos > 0:
            self._client._client.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=1, retain=retain)


async def next_message(it: AsyncIterator[ReceivedMessage], timeout_s: float) -> ReceivedMessage | None:
    """The next message, or None if none arrives within ``timeout_s``."""
    try:
        return await asyncio.wait_for(anext(it), timeout_s)
    except TimeoutError:
        return None
