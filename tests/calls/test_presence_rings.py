"""Tests that both presence stores keep the state behind ringing, moderation and media
(docs/protocol.md §9, §10, §5 rule 11) the same way: rings (each callee's ends once),
bans, locks, the end of a room, media. One suite, run on the in-process store and on
Redis (a real redis-server)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import pytest

from calls.presence.base import (
    JoinStatus,
    Member,
    Participant,
    Presence,
    RingEnd,
    RingRecord,
    RoomSession,
    room_key,
)
from calls.presence.memory import InMemoryPresence
from calls.presence.redis import RedisPresence

LEASE_SECS = 0.3
GROUP = "7"
KEY = room_key("call", GROUP)


def participant(socket_id: str, user_id: str, *, video: bool | None = True) -> Participant:
    return Participant(socket_id, user_id, f"user{user_id}", f"User {user_id}", "2026-12-01T08:00:00.000Z", video=video)


def session(
    room_id: str = "call", group_id: str | None = GROUP, *, creator: str = "1", call_type: str = "video"
) -> RoomSession:
    metadata = {"callType": call_type, "createdAt": "2026-12-01T08:00:00.000Z", "createdBy": creator}
    return RoomSession(room_id, f"s-{room_id}-{time.monotonic_ns()}", metadata, group_id)


async def join(
    presence: Presence,
    socket_id: str,
    user_id: str,
    new_session: RoomSession | None = None,
    *,
    moderator: bool = False,
    video: bool | None = True,
):
    new_session = new_session or session()
    groups = frozenset({new_session.group_id}) if new_session.group_id else frozenset()
    return await presence.join(
        new_session=new_session,
        member=Member(participant(socket_id, user_id, video=video), f"channel-{socket_id}"),
        capacity=16,
        group_ids=groups,
        moderator=moderator,
    )


def record(ring_id: str = "ring-1", *, key: str = KEY, ringer: str = "1", expires_in: float = 30.0) -> RingRecord:
    room_id = key.split("@")[0]
    return RingRecord(
        ring_id,
        key,
        room_id,
        GROUP,
        "video",
        "session-1",
        participant("ringer-socket", ringer),
        int((time.time() + expires_in) * 1000),
    )


def ends(found: list[RingEnd]) -> list[tuple[str, str, str]]:
    return sorted((e.ring.ring_id, e.user_id, e.outcome) for e in found)


@pytest.fixture(params=["memory", "redis"])
async def presence(request: pytest.FixtureRequest) -> AsyncIterator[Presence]:
    if request.param == "memory":
        yield InMemoryPresence()
        return
    store = RedisPresence(request.getfixturevalue("redis_url"), lease_secs=LEASE_SECS)
    try:
        yield store
    finally:
        await store.close()


# ---------------------------------------------------------------------------
# Rings
# ---------------------------------------------------------------------------


async def test_a_ring_rings_its_users_and_keeps_its_record(presence: Presence) -> None:
    ring = record()

    assert await presence.start_ring(ring, ["2", "3", "2"]) == ["2", "3"]

    assert await presence.rings_of(user_id="2") == [ring]
    assert await presence.rings_of(user_id="3") == [ring]
    assert await presence.rings_of(user_id="4") == []


async def test_a_user_already_rung_for_a_room_keeps_its_ring(presence: Presence) -> None:
    first = record("ring-1")
    await presence.start_ring(first, ["2"])

    assert await presence.start_ring(record("ring-2", ringer="3"), ["2"]) == []
    assert await presence.start_ring(record("ring-3"), ["2", "4"]) == ["4"]

    assert await presence.rings_of(user_id="2") == [first]
    other_room = record("ring-4", key=room_key("other", GROUP))
    assert await presence.start_ring(other_room, ["2"]) == ["2"]  # another room rings it too
    assert sorted(r.ring_id for r in await presence.rings_of(user_id="2")) == ["ring-1", "ring-4"]


async def test_a_ring_with_nobody_to_ring_is_not_a_ring(presence: Presence) -> None:
    await presence.start_ring(record("ring-1"), ["2"])
    assert await presence.start_ring(record("ring-2"), ["2"]) == []
    assert await presence.end_rings(outcome="cancelled", ring_id="ring-2") == []
    assert await presence.end_rings(outcome="declined", ring_id="ring-2", user_id="2") == []


async def test_a_callees_ring_ends_once(presence: Presence) -> None:
    ring = record()
    await presence.start_ring(ring, ["2", "3"])

    found = await presence.end_rings(outcome="declined", ring_id="ring-1", user_id="2")

    assert found == [RingEnd(ring, "2", "declined")]
    assert await presence.end_rings(outcome="accepted", ring_id="ring-1", user_id="2") == []
    assert await presence.end_rings(outcome="accepted", room_key=KEY, user_id="2") == []
    assert await presence.rings_of(user_id="2") == []
    assert await presence.rings_of(user_id="3") == [ring]  # the other callee rings on
    assert await presence.start_ring(record("ring-2"), ["2"]) == ["2"]  # and it may be rung again


async def test_a_reply_for_a_user_the_ring_does_not_ring_ends_nothing(presence: Presence) -> None:
    await presence.start_ring(record(), ["2"])
    assert await presence.end_rings(outcome="accepted", ring_id="ring-1", user_id="1") == []
    assert await presence.end_rings(outcome="accepted", ring_id="unknown", user_id="2") == []
    assert len(await presence.rings_of(user_id="2")) == 1


async def test_only_the_ringers_user_cancels_and_it_ends_every_callee_still_ringing(presence: Presence) -> None:
    ring = record(ringer="1")
    await presence.start_ring(ring, ["2", "3", "4"])
    await presence.end_rings(outcome="declined", ring_id="ring-1", user_id="3")

    assert await presence.end_rings(outcome="cancelled", ring_id="ring-1", ringer_user_id="2") == []
    found = await presence.end_rings(outcome="cancelled", ring_id="ring-1", ringer_user_id="1")

    assert ends(found) == [("ring-1", "2", "cancelled"), ("ring-1", "4", "cancelled")]
    assert await presence.end_rings(outcome="cancelled", ring_id="ring-1", ringer_user_id="1") == []


async def test_the_rings_of_a_room_end_with_it_or_one_users(presence: Presence) -> None:
    other_key = room_key("other", GROUP)
    await presence.start_ring(record("ring-1"), ["2", "3"])
    await presence.start_ring(record("ring-2"), ["4"])
    await presence.start_ring(record("ring-3", key=other_key), ["2"])

    assert ends(await presence.end_rings(outcome="accepted", room_key=KEY, user_id="2")) == [
        ("ring-1", "2", "accepted")
    ]
    assert ends(await presence.end_rings(outcome="call-ended", room_key=KEY)) == [
        ("ring-1", "3", "call-ended"),
        ("ring-2", "4", "call-ended"),
    ]
    assert await presence.end_rings(outcome="call-ended", room_key=KEY) == []
    assert [r.ring_id for r in await presence.rings_of(user_id="2")] == ["ring-3"]  # another room's


async def test_rings_whose_time_is_up_are_missed_once(presence: Presence) -> None:
    due, later = record("ring-due", expires_in=-0.01), record("ring-later", key=room_key("other", GROUP))
    await presence.start_ring(due, ["2", "3"])
    await presence.start_ring(later, ["2"])
    await presence.end_rings(outcome="declined", ring_id="ring-due", user_id="3")

    assert ends(await presence.expire_rings()) == [("ring-due", "2", "missed")]
    assert await presence.expire_rings() == []
    assert await presence.rings_of(user_id="2") == [later]
    assert await presence.end_rings(outcome="accepted", ring_id="ring-due", user_id="2") == []


async def test_concurrent_ends_of_one_ring_end_it_once(presence: Presence) -> None:
    await presence.start_ring(record(expires_in=-0.01), ["2"])

    found = await asyncio.gather(
        presence.end_rings(outcome="declined", ring_id="ring-1", user_id="2"),
        presence.end_rings(outcome="accepted", room_key=KEY, user_id="2"),
        presence.end_rings(outcome="cancelled", ring_id="ring-1", ringer_user_id="1"),
        presence.expire_rings(),
    )

    assert sum(len(f) for f in found) == 1


async def test_the_ringers_participant_is_kept_whole(presence: Presence) -> None:
    ringer = dataclasses.replace(participant("ringer-socket", "1"), audio=False, video=False, screen=True)
    ring = dataclasses.replace(record(), ringer=ringer)
    await presence.start_ring(ring, ["2"])
    assert (await presence.rings_of(user_id="2"))[0].ringer == ringer


# ---------------------------------------------------------------------------
# Bans, locks, the end of a room
# ---------------------------------------------------------------------------


async def test_a_banned_user_is_refused_until_the_ban_ends(presence: Presence) -> None:
    live = session()
    await join(presence, "a", "1", live)
    until = int((time.time() + 60) * 1000)
    await presence.ban(room_key=KEY, user_id="2", until_ms=until)

    refused = await join(presence, "b", "2", live, moderator=True)

    assert refused.status is JoinStatus.BANNED and refused.banned_until_ms == until
    assert [m.participant.socket_id for m in await presence.members(room_key=KEY)] == ["a"]
    assert (await join(presence, "c", "3", live)).status is JoinStatus.JOINED  # another user
    assert (await join(presence, "b", "2", session(group_id=None))).status is JoinStatus.CREATED  # another room


async def test_a_ban_outlives_the_session_and_expires(presence: Presence) -> None:
    await join(presence, "a", "1")
    await presence.ban(room_key=KEY, user_id="2", until_ms=int((time.time() + 60) * 1000))
    await presence.leave(room_key=KEY, socket_id="a")
    assert (await join(presence, "b", "2")).status is JoinStatus.BANNED  # also a first join

    await presence.ban(room_key=KEY, user_id="2", until_ms=int(time.time() * 1000) - 1)

    assert (await join(presence, "b", "2")).status is JoinStatus.CREATED


async def test_a_locked_room_admits_only_moderators_and_an_ungrouped_rooms_creator(presence: Presence) -> None:
    grouped, ungrouped = session(creator="1"), session(group_id=None, creator="1")
    await join(presence, "a", "1", grouped)
    await join(presence, "u", "1", ungrouped)
    assert await presence.locked(room_key=KEY) is False

    members = await presence.set_locked(room_key=KEY, locked=True)
    await presence.set_locked(room_key="call", locked=True)

    assert [m.participant.socket_id for m in members] == ["a"]
    assert await presence.locked(room_key=KEY) is True
    assert (await join(presence, "b", "2", grouped)).status is JoinStatus.LOCKED
    # The creator of a group's room is no moderator of it (staff, owners, admins are).
    assert (await join(presence, "a2", "1", grouped)).status is JoinStatus.LOCKED
    moderator = await join(presence, "m", "3", grouped, moderator=True)
    assert moderator.status is JoinStatus.JOINED and moderator.locked is True
    assert (await join(presence, "u2", "2", ungrouped)).status is JoinStatus.LOCKED
    assert (await join(presence, "u3", "1", ungrouped)).status is JoinStatus.JOINED  # its creator

    await presence.set_locked(room_key=KEY, locked=False)
    unlocked = await join(presence, "b", "2", grouped)
    assert unlocked.status is JoinStatus.JOINED and unlocked.locked is False


async def test_a_lock_ends_with_its_session(presence: Presence) -> None:
    await join(presence, "a", "1")
    await presence.set_locked(room_key=KEY, locked=True)
    await presence.leave(room_key=KEY, socket_id="a")
    assert await presence.locked(room_key=KEY) is False
    assert await presence.set_locked(room_key=KEY, locked=True) == ()  # no session: nothing locked

    created = await join(presence, "b", "2")

    assert created.status is JoinStatus.CREATED and created.locked is False


async def test_ending_a_room_puts_everyone_out_at_once(presence: Presence) -> None:
    live = session()
    await join(presence, "a", "1", live)
    await join(presence, "b", "2", live)
    await presence.set_locked(room_key=KEY, locked=True)

    ended = await presence.end_room(room_key=KEY)

    assert ended is not None
    ended_session, members = ended
    assert ended_session == live
    assert [m.participant.socket_id for m in members] == ["a", "b"]
    assert await presence.session(room_key=KEY) is None
    assert await presence.members(room_key=KEY) == ()
    assert await presence.room_of(socket_id="a") is None
    assert await presence.leave(room_key=KEY, socket_id="b") is None
    assert await presence.end_room(room_key=KEY) is None
    again = await join(presence, "c", "2")
    assert again.status is JoinStatus.CREATED and again.locked is False and again.session != live
    assert (await join(presence, "a", "1")).previous is None  # "a" was in no room any more


# ---------------------------------------------------------------------------
# Media
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("call_type", "video"), [("video", True), ("audio", False)])
async def test_a_member_without_video_chosen_sends_video_as_the_rooms_call_type(
    presence: Presence, call_type: str, video: bool
) -> None:
    live = session(call_type=call_type)
    outcome = await join(presence, "a", "1", live, video=None)
    assert outcome.members[0].participant.video is video
    chosen = await join(presence, "b", "2", live, video=not video)
    assert chosen.members[1].participant.video is (not video)


async def test_media_updates_are_kept_and_returned_with_the_room(presence: Presence) -> None:
    live = session()
    await join(presence, "a", "1", live)
    await join(presence, "b", "2", live)

    updated = await presence.update_media(room_key=KEY, socket_id="b", audio=False, video=False, screen=True)

    assert updated is not None
    changed, members = updated
    assert (changed.socket_id, changed.audio, changed.video, changed.screen) == ("b", False, False, True)
    assert [m.participant for m in members][1] == changed
    assert [m.participant for m in await presence.members(room_key=KEY)][1] == changed
    departure = await presence.leave(room_key=KEY, socket_id="b")
    assert departure is not None and departure.participant == changed


async def test_media_of_a_socket_not_in_the_room_is_none(presence: Presence) -> None:
    await join(presence, "a", "1")
    assert await presence.update_media(room_key=KEY, socket_id="x", audio=True, video=True, screen=False) is None
    assert await presence.update_media(room_key="call", socket_id="a", audio=True, video=True, screen=False) is None
