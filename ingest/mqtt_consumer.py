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
import contextlib
import socket
from collections import deque
from dataclasses import dataclass

import aiomqtt

from schemas.topics import parse_mqtt_url


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
            # With manual acks the broker stops sending once its in-flight window for this
            # client is full (Mosquitto's max_inflight_messages), so this bound is never hit
            # as long as it is at least that window.
            max_queued_incoming_messages=max_queued_messages,
            # paho does not set TCP_NODELAY; Nagle would hold each small PUBACK for the broker's
            # delayed ACK (~40 ms on Linux).
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        self._topic = topic
        self._buffer: deque[ReceivedMessage] = deque()
        self._ready = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._failure: aiomqtt.MqttError | None = None

    async def __aenter__(self) -> AckingConsumer:
        self._client._client.manual_ack_set(True)
        await self._client.__aenter__()
        await self._client.subscribe(self._topic, qos=1)
        # One reader task moves messages into a plain deque. Waiting with a timeout then
        # never cancels a queue read half-way (which could drop a message in Python 3.11).
        self._reader = asyncio.create_task(self._read(), name="ingest-mqtt-reader")
        return self

    async def leave(self) -> None:
        """Unsubscribe before a planned stop: a persistent session that stays subscribed keeps
        receiving its round-robin share of the shared subscription while nobody reads it."""
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.unsubscribe(self._topic)

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._reader
        with contextlib.suppress(aiomqtt.MqttError):
            await self._client.__aexit__(None, None, None)

    async def _read(self) -> None:
        try:
            async for msg in self._client.messages:
                payload = msg.payload if isinstance(msg.payload, bytes | bytearray) else str(msg.payload).encode()
                self._buffer.append(ReceivedMessage(topic=str(msg.topic), payload=bytes(payload), mid=msg.mid,
                                                    qos=msg.qos))
                self._ready.set()
        except aiomqtt.MqttError as exc:
            self._failure = exc
            self._ready.set()

    async def get(self, timeout_s: float) -> ReceivedMessage | None:
        """The next message, or None if none arrives within ``timeout_s``; raises if the connection is gone."""
        if not self._buffer:
            if self._failure is not None:
                raise self._failure
            self._ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout_s)
            if not self._buffer:
                if self._failure is not None:
                    raise self._failure
                return None
        return self._buffer.popleft()

    def pending(self) -> int:
        return len(self._buffer)

    def ack(self, message: ReceivedMessage) -> None:
        """Acknowledge a message whose rows are committed."""
        if message.qos > 0:
            self._client._client.ack(message.mid, message.qos)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self._client.publish(topic, payload, qos=1, retain=retain)
