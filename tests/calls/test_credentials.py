"""Tests that authentication lasts as long as its credential: ``authExpiresAt``,
``webrtc:refresh-auth``, 4401 at expiry, and users deactivated, deleted or removed from
a group while connected (docs/protocol.md §2); and the per-user caps on connections
(4409) and joins (``rate-limited``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any

import pytest
from rest_framework_simplejwt.tokens import AccessToken

from accounts.models import User
from calls import credentials
from calls.protocol import iso_utc
from groups.models import Group, Membership
from tests.calls.conftest import InRoom
from tests.conftest import ConnectFactory, access_token

pytestmark = pytest.mark.django_db(transaction=True)


def token_for(user: User, lifetime_secs: int) -> tuple[str, float]:
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=dt.timedelta(seconds=lifetime_secs))
    return str(token), float(token["exp"])


async def test_connected_says_when_the_authentication_expires(connect: ConnectFactory, alice: User) -> None:
    raw, expires = token_for(alice, 600)
    client = await connect(path=f"/ws/calls/?token={raw}", expect_connected=False)

    frame = await client.expect("webrtc:connected")

    assert frame["data"]["authExpiresAt"] == iso_utc(expires)
    assert set(frame["data"]) == {"socketId", "userId", "resumeToken", "authExpiresAt"}


async def test_a_connection_is_closed_with_4401_when_its_token_expires(connect: ConnectFactory, alice: User) -> None:
    raw, expires = token_for(alice, 600)
    client = await connect(path=f"/ws/calls/?token={raw}")

    await credentials.sweep(now=expires - 1)
    await client.round_trip()  # still open just before
    await credentials.sweep(now=expires)

    await client.expect_close(4401)


async def test_a_refreshed_connection_outlives_its_first_token(connect: ConnectFactory, alice: User) -> None:
    raw, expires = token_for(alice, 600)
    client = await connect(path=f"/ws/calls/?token={raw}")
    fresh, fresh_expires = token_for(alice, 1200)

    await client.send("webrtc:refresh-auth", {"token": fresh}, id="r-1")
    ack = await client.expect("webrtc:ack")
    await credentials.sweep(now=expires + 1)

    assert ack == {"event": "webrtc:ack", "data": {"event": "webrtc:refresh-auth"}, "id": "r-1"}
    await client.round_trip()
    await credentials.sweep(now=fresh_expires)
    await client.expect_close(4401)


@pytest.mark.parametrize("which", ["another user's", "malformed", "expired", "refresh token"])
async def test_refresh_auth_with_a_bad_token_is_forbidden_and_changes_nothing(
    connect: ConnectFactory, alice: User, bob: User, which: str
) -> None:
    raw, expires = token_for(alice, 600)
    client = await connect(path=f"/ws/calls/?token={raw}")
    from rest_framework_simplejwt.tokens import RefreshToken

    bad = {
        "another user's": token_for(bob, 1200)[0],
        "malformed": "not-a-token",
        "expired": token_for(alice, -10)[0],
        "refresh token": str(RefreshToken.for_user(alice)),
    }[which]

    await client.send("webrtc:refresh-auth", {"token": bad}, id="r-1")

    error = await client.expect_error("forbidden", event="webrtc:refresh-auth")
    assert error["id"] == "r-1"
    await credentials.sweep(now=expires)
    await client.expect_close(4401)


@pytest.mark.parametrize("change", ["deactivated", "deleted"])
async def test_a_user_deactivated_or_deleted_is_closed_with_4401(
    in_room: InRoom, alice: User, bob: User, change: str
) -> None:
    stays, goes = await in_room("r", alice, bob)
    if change == "deactivated":
        bob.is_active = False
        await bob.asave(update_fields=["is_active"])
    else:
        await bob.adelete()

    await credentials.sweep()

    await goes.expect_close(4401)
    await goes.close()  # the disconnect a server sends the application after a close
    left = await stays.expect("webrtc:participant-left")
    assert left["data"]["participant"]["socketId"] == goes.socket_id
    await stays.round_trip()


async def test_a_user_removed_from_the_group_leaves_its_rooms_as_removed(
    in_room: InRoom, alice: User, bob: User, carol: User, team: Group
) -> None:
    stays, goes, other = await in_room("team-call", alice, bob, carol, metadata={"groupId": team.pk})
    await Membership.objects.filter(group=team, user=bob).adelete()

    await credentials.sweep()

    for client in (stays, other):
        left = await client.expect("webrtc:participant-left")
        assert left["data"]["reason"] == "removed"
        assert left["data"]["participant"]["socketId"] == goes.socket_id
    assert (await goes.expect("webrtc:room-left"))["data"] == {"callRoomId": "team-call"}
    await goes.round_trip()  # still connected, and may join elsewhere
    assert (await goes.join("elsewhere"))["participantCount"] == 1
    await stays.round_trip()


async def test_a_group_room_joined_while_the_sweep_asks_is_not_a_removal(
    connect: ConnectFactory, alice: User, bob: User, team: Group, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sweep asks about the rooms its connections are in when it starts; one that
    joins a group room while the answer is awaited is not in that answer, and stays."""
    joiner = await connect(alice)
    await (await connect(bob)).join("team-call", metadata={"groupId": team.pk})
    asked = threading.Event()
    answer = threading.Event()
    still_valid = credentials._still_valid

    def held(*args: Any) -> Any:
        asked.set()
        assert answer.wait(10), "the test never let the sweep's lookup answer"
        return still_valid(*args)

    monkeypatch.setattr(credentials, "_still_valid", held)
    sweep = asyncio.create_task(credentials.sweep())
    assert await asyncio.to_thread(asked.wait, 10)
    await joiner.join("team-call", metadata={"groupId": team.pk})  # on the other lookup thread
    answer.set()
    await sweep

    await joiner.round_trip()  # no room-left came before it


async def test_a_connection_outside_any_group_room_is_left_alone(connect: ConnectFactory, alice: User) -> None:
    client = await connect(alice)
    await client.join("open-room")

    await credentials.sweep()

    await client.round_trip()


async def test_one_user_holds_at_most_the_connection_cap(
    settings: Any, connect: ConnectFactory, alice: User, bob: User
) -> None:
    settings.CALLS_MAX_CONNECTIONS_PER_USER = 10
    clients = [await connect(alice) for _ in range(10)]

    refused = await connect(alice, expect_connected=False)
    await refused.expect_close(4409)
    other = await connect(bob)  # another user is not affected
    await clients[0].close()
    again = await connect(alice)

    assert again.socket_id and other.socket_id


async def test_joins_per_minute_are_capped_per_user(
    settings: Any, connect: ConnectFactory, alice: User, bob: User
) -> None:
    settings.CALLS_JOINS_PER_MINUTE = 3
    first, second = await connect(alice), await connect(alice)
    await first.join("a")
    await second.join("b")
    await first.join("c")

    await second.send("webrtc:join-room", {"callRoomId": "d"})

    error = await second.expect_error("rate-limited", event="webrtc:join-room")
    assert 1 <= error["data"]["details"]["retryAfter"] <= 60
    assert (await (await connect(bob)).join("d"))["participantCount"] == 1
    await first.round_trip()


def test_the_access_token_fixture_is_a_fresh_one(alice: User) -> None:
    assert AccessToken(access_token(alice))["user_id"] == str(alice.pk)
