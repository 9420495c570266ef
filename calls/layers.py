"""The channel layer between processes: channels_redis's pub/sub layer, plus ``attach``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from channels_redis.pubsub import RedisPubSubChannelLayer

logger = logging.getLogger("calls")


class DispatchingRedisPubSubChannelLayer(RedisPubSubChannelLayer):
    """``RedisPubSubChannelLayer`` whose channels can also be read by a callback.

    A process's inbox (``calls.delivery``) is read by ``attach``-ing a handler: each
    message is handed over as the subscription reads it, instead of being queued for a
    task that reads the queue, which then wakes the connection's writer: one task wake
    less per frame from another process (docs/benchmarks.md has the figure).
    """

    def attach(self, channel: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Hand every message of ``channel`` (a channel from ``new_channel``, read by no
        one else) to ``handler``, in order, as it arrives."""
        # channels_redis puts what a subscription reads into ``channels[name]`` with
        # put_nowait(); this stands in for the queue it made in new_channel().
        self._get_layer().channels[channel] = _Handover(handler, self.deserialize)


class _Handover:
    __slots__ = ("deserialize", "handler")

    def __init__(self, handler: Callable[[dict[str, Any]], None], deserialize: Callable[[bytes], Any]) -> None:
        self.handler = handler
        self.deserialize = deserialize

    def put_nowait(self, data: bytes) -> None:
        try:
            self.handler(self.deserialize(data))
        except Exception:  # never into channels_redis's reader, which would pause a second
            logger.exception("inbox message not handled")
