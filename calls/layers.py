"""Channel layers tuned for signaling: the same interfaces as Channels' and
channels_redis's, with the per-message costs that relaying does not need taken out.

Figures are from ``python -m bench.relay`` and the issue-7 measurements.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer
from channels_redis.pubsub import RedisPubSubChannelLayer, RedisPubSubLoopLayer, _wrap_close

from calls import metrics

logger = logging.getLogger("calls")

SWEEP_INTERVAL_SECS = 1.0
LOCAL_CAPACITY = 100  # messages queued for one connection, as InMemoryChannelLayer's default


class SignalingInMemoryChannelLayer(InMemoryChannelLayer):
    """``InMemoryChannelLayer`` that sweeps for expired messages once a second instead
    of on every receive (the sweep walks every channel and group: about a fifth of the
    server's time at 400 connections), and does not deep-copy messages: every message
    sent here is built for one send and never touched again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._next_sweep = 0.0

    async def send(self, channel: str, message: dict) -> None:
        queue = self.channels.get(channel)
        if queue is None:
            queue = self.channels.setdefault(channel, asyncio.Queue(maxsize=self.get_capacity(channel)))
        try:
            queue.put_nowait((time.time() + self.expiry, message))
        except asyncio.QueueFull:
            raise ChannelFull(channel) from None

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_INTERVAL_SECS
            super()._clean_expired()


class _BoundedInbox(asyncio.Queue):
    """A connection's queue of messages from other processes, which channels_redis
    keeps without bound. Past ``LOCAL_CAPACITY`` its client has stopped reading for
    a long while (the server's flow control holds its consumer back): further messages
    are dropped and counted rather than kept until the process runs out of memory. A
    publisher in another process cannot be told; one in this process gets ChannelFull
    (``internal-error``) instead, as on the in-memory layer."""

    def put_nowait(self, item: Any) -> None:
        if self.qsize() >= LOCAL_CAPACITY:
            metrics.DROPPED.inc()
            logger.warning("inbox full, message from another process dropped")
            return
        super().put_nowait(item)


class _LocalFirstLoopLayer(RedisPubSubLoopLayer):
    async def _subscribe_to_channel(self, channel: str) -> None:
        self.channels[channel] = _BoundedInbox()
        await self._get_shard(channel).subscribe(channel)

    async def send(self, channel: str, message: dict) -> None:
        queue = self.channels.get(channel)
        if queue is None:
            await super().send(channel, message)
            return
        # The receiver is in this process: skip the round trip through Redis.
        if queue.qsize() >= LOCAL_CAPACITY:
            raise ChannelFull(channel)
        queue.put_nowait(self.channel_layer.serialize(message))


class LocalFirstRedisPubSubChannelLayer(RedisPubSubChannelLayer):
    """``RedisPubSubChannelLayer`` that hands a message to a receiver in the same
    process directly, publishing through Redis only to other processes."""

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LocalFirstLoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
