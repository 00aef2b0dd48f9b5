"""Messages between gateway nodes over MQTT: one multiplexed session per process, never one per charger.

The link subscribes to this node's two topics (``schemas.topics.node_commands_topic`` and
``node_replies_topic``, QoS 1) and publishes to other nodes' topics; it moves bytes and knows nothing of
what they mean (``csms.gateway.remote``). The session is persistent (``clean_session=False``): a command
published while this node's link was reconnecting is delivered when it is back, and QoS 1 may deliver
a message twice, which is why the receiving side deduplicates by command id.

A publish while the broker is unreachable fails at once with ``ConnectionError`` (the command is not
sent; the caller answers 503) instead of waiting for a reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiomqtt

from csms.bus.mqtt import TCP_NO_DELAY
from schemas.topics import node_commands_topic, node_replies_topic, parse_mqtt_url

logger = logging.getLogger(__name__)

Handler = Callable[[str, bytes], None]



class MqttNodeLink:
    """This process's MQTT session for node-to-node messages."""

    def __init__(self, *, url: str, node_id: str, handler: Handler, connect_timeout_s: float = 10.0,
                 publish_timeout_s: float = 10.0, max_queued_incoming: int = 10000,
                 retry_max_s: float = 10.0) -> None:
        address = parse_mqtt_url(url)
        self._host, self._port, self._user, self._password = (address.host, address.port, address.username,
                                                               address.password)
        self._node_id = node_id
        self._handler = handler
        self._connect_timeout_s = connect_timeout_s
        self._publish_timeout_s = publish_timeout_s
        self._max_queued_incoming = max_queued_incoming
        self._retry_max_s = retry_max_s
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="node-link-mqtt")

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish with QoS 1 and wait for the broker's PUBACK; ``ConnectionError`` if that is impossible."""
        client = self._client
        if client is None:
            raise ConnectionError("the MQTT broker is not reachable from this node")
        try:
            await client.publish(topic, payload, qos=1, timeout=self._publish_timeout_s)
        except aiomqtt.MqttError as exc:
            raise ConnectionError(f"publishing to the MQTT broker failed: {exc}") from exc

    async def _run(self) -> None:
        backoff = 0.2
        down_since: float | None = None
        while True:
            try:
                async with aiomqtt.Client(self._host, self._port, username=self._user, password=self._password,
                                          identifier=f"csms-node-link-{self._node_id}", clean_session=False,
                                          timeout=self._connect_timeout_s,
                                          max_queued_incoming_messages=self._max_queued_incoming,
                                          socket_options=TCP_NO_DELAY) as client:
                    await client.subscribe(node_commands_topic(self._node_id), qos=1)
                    await client.subscribe(node_replies_topic(self._node_id), qos=1)
                    self._client = client
                    self.connected.set()
                    backoff = 0.2
                    if down_since is not None:
                        logger.info("node link reconnected after %.1f s", time.monotonic() - down_since)
                        down_since = None
                    else:
                        logger.info("node link connected: commands for node %s are received", self._node_id)
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes | bytearray) else b""
                        try:
                            self._handler(str(message.topic), bytes(payload))
                        except Exception:
                            logger.exception("handling a node message on %s failed", message.topic)
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                self._client = None
                self.connected.clear()
                if down_since is None:
                    down_since = time.monotonic()
                    logger.warning("node link to the MQTT broker unavailable (%s); commands across nodes fail "
                                   "with 503 until it is back", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._retry_max_s)
            finally:
                self._client = None
                self.connected.clear()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
