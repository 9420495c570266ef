"""Fixtures and helpers shared by the signaling tests: clients already gathered in a room."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from accounts.models import User
from tests.conftest import Client, ConnectFactory

InRoom = Callable[..., Awaitable[list[Client]]]


async def all_silent(*clients: Client) -> None:
    """Nothing arrives at any of ``clients`` (watched at once, not one after another)."""
    await asyncio.gather(*(client.expect_silence() for client in clients))


@pytest.fixture
def in_room(connect: ConnectFactory) -> InRoom:
    """``await in_room("room", alice, bob)`` → their clients, joined in that order.

    Every ``participant-joined`` the joins caused is consumed, so each client's next
    frame is whatever the test provokes. Extra keyword arguments go with every join
    (only the creator's count).
    """

    async def _in_room(room: str, *users: User, **join_extra: Any) -> list[Client]:
        clients: list[Client] = []
        for user in users:
            client = await connect(user)
            await client.join(room, **join_extra)
            for earlier in clients:
                await earlier.expect("webrtc:participant-joined")
            clients.append(client)
        return clients

    return _in_room


def socket_ids(participants: list[dict[str, Any]]) -> list[str]:
    return [participant["socketId"] for participant in participants]
