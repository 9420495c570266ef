"""Tests that a channel attached to a handler gets every message, in order, as it
arrives, on a real Redis."""

from __future__ import annotations

import asyncio

import pytest

from calls.layers import DispatchingRedisPubSubChannelLayer

DELIVERY_TIMEOUT_SECS = 5.0


def layer_for(redis_url: str) -> DispatchingRedisPubSubChannelLayer:
    return DispatchingRedisPubSubChannelLayer(hosts=[{"address": redis_url, "socket_timeout": None}])


async def test_an_attached_channel_hands_every_message_to_its_handler_in_order(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Tests also that a handler's failure is logged as ours and never reaches
    channels_redis's reader, which would stop reading for a second."""
    receiving, sending = layer_for(redis_url), layer_for(redis_url)  # two processes' layers
    received: list[str] = []
    all_in = asyncio.Event()

    def handler(message: dict) -> None:
        if message["text"] == "bad":
            raise ValueError("a handler failure must not stop the next messages")
        received.append(message["text"])
        if len(received) == 50:
            all_in.set()

    try:
        inbox = await receiving.new_channel("calls.")
        receiving.attach(inbox, handler)
        await sending.send(inbox, {"type": "calls.deliver", "text": "bad"})
        for i in range(50):
            await sending.send(inbox, {"type": "calls.deliver", "text": str(i)})
        await asyncio.wait_for(all_in.wait(), DELIVERY_TIMEOUT_SECS)
        assert received == [str(i) for i in range(50)]
        assert [r.getMessage() for r in caplog.records if r.name == "calls"] == ["inbox message not handled"]
        assert not [r for r in caplog.records if r.name.startswith("channels_redis")]
    finally:
        await receiving.flush()
        await sending.flush()
