"""Tests that the signaling channel layers bound what they queue for one connection,
so that a client that stops reading cannot grow the process without limit."""

from __future__ import annotations

import asyncio

import pytest
from channels.exceptions import ChannelFull

from calls import metrics
from calls.layers import LOCAL_CAPACITY, LocalFirstRedisPubSubChannelLayer, SignalingInMemoryChannelLayer

DELIVERY_TIMEOUT_SECS = 5.0


def pubsub_layer(redis_url: str) -> LocalFirstRedisPubSubChannelLayer:
    return LocalFirstRedisPubSubChannelLayer(hosts=[{"address": redis_url, "socket_timeout": None}])


async def test_the_in_memory_layer_refuses_past_its_capacity() -> None:
    layer = SignalingInMemoryChannelLayer()
    channel = await layer.new_channel()
    for i in range(LOCAL_CAPACITY):
        await layer.send(channel, {"type": "calls.frame", "text": str(i)})
    with pytest.raises(ChannelFull):
        await layer.send(channel, {"type": "calls.frame", "text": "one too many"})
    assert (await layer.receive(channel))["text"] == "0"


async def test_a_receiver_in_the_same_process_is_served_without_redis_and_refuses_past_capacity(
    redis_url: str,
) -> None:
    layer = pubsub_layer(redis_url)
    try:
        channel = await layer.new_channel()
        for i in range(LOCAL_CAPACITY):
            await layer.send(channel, {"type": "calls.frame", "text": str(i)})
        with pytest.raises(ChannelFull):
            await layer.send(channel, {"type": "calls.frame", "text": "one too many"})
        received = [(await layer.receive(channel))["text"] for _ in range(LOCAL_CAPACITY)]
        assert received == [str(i) for i in range(LOCAL_CAPACITY)]
    finally:
        await layer.flush()


async def test_messages_from_another_process_beyond_capacity_are_dropped_and_counted(redis_url: str) -> None:
    """Tests that a connection that reads nothing holds at most LOCAL_CAPACITY messages
    published by another process; the first ones are kept in order."""
    receiving, publishing = pubsub_layer(redis_url), pubsub_layer(redis_url)  # two processes' layers
    dropped_before = metrics.DROPPED._value.get()
    try:
        channel, marker = await receiving.new_channel(), await receiving.new_channel()
        extra = 25
        for i in range(LOCAL_CAPACITY + extra):
            await publishing.send(channel, {"type": "calls.frame", "text": str(i)})
        # Redis delivers one publisher's messages in order: once the marker is in, all are.
        await publishing.send(marker, {"type": "calls.frame", "text": "marker"})
        async with asyncio.timeout(DELIVERY_TIMEOUT_SECS):
            await receiving.receive(marker)
            received = [(await receiving.receive(channel))["text"] for _ in range(LOCAL_CAPACITY)]
        assert received == [str(i) for i in range(LOCAL_CAPACITY)]
        assert metrics.DROPPED._value.get() == dropped_before + extra
        # Once read, the inbox takes messages again.
        await publishing.send(channel, {"type": "calls.frame", "text": "after"})
        async with asyncio.timeout(DELIVERY_TIMEOUT_SECS):
            assert (await receiving.receive(channel))["text"] == "after"
    finally:
        await receiving.flush()
        await publishing.flush()
