"""Tests that both presence stores keep the same rules: one suite, run on each.

The Redis store runs against a real redis-server; extra tests cover what only a shared
store has (leases, reaping, restore after Redis lost its data, concurrency across
clients that share nothing but Redis).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels_redis.pubsub import RedisPubSubChannelLayer

from calls.presence.base import (
    Forward,
    JoinStatus,
    Member,
    Parking,
    Participant,
    Presence,
    PresenceEvicted,
    PresenceUnavailable,
    ResumeStatus,
    Resumption,
    RoomSession,
    Route,
    RouteStatus,
    parked_channel,
)
from calls.presence.memory import InMemoryPresence
from calls.presence.redis import RedisPresence

LEASE_SECS = 0.3
ANYONE: frozenset[str] = frozenset()


def member(socket_id: str, user_id: str = "1") -> Member:
    participant = Participant(
        socket_id, user_id, f"user{user_id}", f"User {user_id}", "2026-11-26T08:00:00.000Z", video=True
    )
    return Member(participant, f"channel-{socket_id}")


def session(room_id: str = "room", session_id: str = "s1", group_id: str | None = None) -> RoomSession:
    metadata = {"callType": "video", "createdAt": "2026-11-26T08:00:00.000Z", "createdBy": "1"}
    return RoomSession(room_id, session_id, metadata | ({"groupId": group_id} if group_id else {}), group_id)


async def join(presence: Presence, socket_id: str, room_id: str = "room", **kwargs: object):
    options = {"capacity": 16, "group_ids": ANYONE} | kwargs
    return await presence.join(new_session=session(room_id, f"s-{socket_id}"), member=member(socket_id), **options)


def socket_ids(members: tuple[Member, ...]) -> list[str]:
    return [m.participant.socket_id for m in members]


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


async def test_the_first_join_creates_the_room(presence: Presence) -> None:
    outcome = await join(presence, "a")
    assert outcome.status is JoinStatus.CREATED
    assert outcome.session == session("room", "s-a")
    assert socket_ids(outcome.members) == ["a"]
    assert outcome.members[0] == member("a")
    assert await presence.session(room_key="room") == session("room", "s-a")


async def test_later_joins_keep_the_first_session_and_join_order(presence: Presence) -> None:
    for socket_id in "abcd":
        outcome = await join(presence, socket_id)
    assert outcome.status is JoinStatus.JOINED
    assert outcome.session.session_id == "s-a"
    assert socket_ids(outcome.members) == ["a", "b", "c", "d"]
    assert socket_ids(await presence.members(room_key="room")) == ["a", "b", "c", "d"]
    assert socket_ids(outcome.others("d")) == ["a", "b", "c"]


async def test_joining_the_same_room_again_changes_nothing(presence: Presence) -> None:
    await join(presence, "a")
    await join(presence, "b")
    outcome = await join(presence, "a")
    assert outcome.status is JoinStatus.ALREADY_IN_ROOM
    assert socket_ids(outcome.members) == ["a", "b"]


async def test_a_full_room_refuses_and_changes_nothing(presence: Presence) -> None:
    await join(presence, "a", capacity=2)
    await join(presence, "b", capacity=2)
    await join(presence, "c", "elsewhere")
    assert (await join(presence, "c", capacity=2)).status is JoinStatus.FULL
    assert socket_ids(await presence.members(room_key="room")) == ["a", "b"]
    assert await presence.room_of(socket_id="c") == "elsewhere"


async def test_a_group_room_admits_its_members_only(presence: Presence) -> None:
    created = await presence.join(
        new_session=session(group_id="7"), member=member("a"), capacity=16, group_ids=frozenset({"7"})
    )
    assert created.session.group_id == "7"
    assert created.session.key == "room@7"
    outsider = await presence.join(
        new_session=session(group_id="7"), member=member("b"), capacity=16, group_ids=frozenset({"8"})
    )
    assert outsider.status is JoinStatus.FORBIDDEN
    insider = await presence.join(
        new_session=session(group_id="7"), member=member("c"), capacity=16, group_ids=frozenset({"7", "8"})
    )
    assert insider.status is JoinStatus.JOINED
    assert socket_ids(await presence.members(room_key="room@7")) == ["a", "c"]
    assert await presence.room_of(socket_id="b") is None


async def test_a_groups_room_and_the_ungrouped_room_of_one_id_are_different_rooms(presence: Presence) -> None:
    """Tests that someone outside the group who takes the id first, even filling its
    ungrouped room, neither receives the group's members nor keeps them out."""
    squatter = await join(presence, "x", "room", capacity=1)
    assert squatter.status is JoinStatus.CREATED
    assert (await join(presence, "y", "room", capacity=1)).status is JoinStatus.FULL
    grouped = await presence.join(
        new_session=session(group_id="7"), member=member("a"), capacity=1, group_ids=frozenset({"7"})
    )
    assert grouped.status is JoinStatus.CREATED
    assert socket_ids(grouped.members) == ["a"]
    assert socket_ids(await presence.members(room_key="room")) == ["x"]
    assert (await presence.route(room_key="room@7", sender="x", target="a")).status is RouteStatus.SENDER_NOT_IN_ROOM
    assert (await presence.route(room_key="room", sender="x", target="a")).status is RouteStatus.TARGET_NOT_IN_ROOM


async def test_creating_a_room_for_a_group_one_is_not_in_is_forbidden(presence: Presence) -> None:
    outcome = await presence.join(new_session=session(group_id="7"), member=member("a"), capacity=16, group_ids=ANYONE)
    assert outcome.status is JoinStatus.FORBIDDEN
    assert await presence.session(room_key="room") is None


async def test_joining_another_room_moves_the_member(presence: Presence) -> None:
    await join(presence, "a", "one")
    await join(presence, "b", "one")
    outcome = await join(presence, "a", "two")
    assert outcome.status is JoinStatus.CREATED
    assert outcome.previous is not None
    assert outcome.previous.session.room_id == "one"
    assert outcome.previous.participant == member("a").participant
    assert socket_ids(outcome.previous.remaining) == ["b"]
    assert await presence.room_of(socket_id="a") == "two"
    assert socket_ids(await presence.members(room_key="one")) == ["b"]


async def test_a_user_holds_at_most_the_limit_of_connections(presence: Presence) -> None:
    for index in range(3):
        assert await presence.open_connection(user_id="7", socket_id=f"s{index}", channel_name=f"c{index}", limit=3)
    assert not await presence.open_connection(user_id="7", socket_id="s3", channel_name="c3", limit=3)
    assert await presence.open_connection(user_id="8", socket_id="t0", channel_name="d0", limit=3)
    await presence.close_connection(user_id="7", socket_id="s0")
    assert await presence.open_connection(user_id="7", socket_id="s3", channel_name="c3", limit=3)
    assert sorted(await presence.connections_of(user_id="7")) == ["c1", "c2", "c3"]
    await presence.close_connection(user_id="7", socket_id="never-opened")


async def test_the_last_one_out_ends_the_session(presence: Presence) -> None:
    await join(presence, "a")
    await join(presence, "b")
    first = await presence.leave(room_key="room", socket_id="a")
    assert first is not None
    assert socket_ids(first.remaining) == ["b"]
    assert not first.room_emptied
    last = await presence.leave(room_key="room", socket_id="b")
    assert last is not None
    assert last.room_emptied
    assert await presence.session(room_key="room") is None
    assert (await join(presence, "c")).session.session_id == "s-c"


async def test_leaving_a_room_one_is_not_in_answers_none(presence: Presence) -> None:
    await join(presence, "a", "one")
    assert await presence.leave(room_key="two", socket_id="a") is None
    assert await presence.leave(room_key="one", socket_id="nobody") is None
    assert await presence.room_of(socket_id="a") == "one"


async def test_routes_check_the_sender_and_the_target(presence: Presence) -> None:
    for socket_id in "abc":
        await join(presence, socket_id)
    await join(presence, "x", "other")
    assert (await presence.route(room_key="nowhere", sender="a", target="b")).status is RouteStatus.NO_ROOM
    assert (await presence.route(room_key="room", sender="x", target="b")).status is RouteStatus.SENDER_NOT_IN_ROOM
    assert (await presence.route(room_key="room", sender="a", target="x")).status is RouteStatus.TARGET_NOT_IN_ROOM
    targeted = await presence.route(room_key="room", sender="a", target="b")
    assert (targeted.status, targeted.channels) == (RouteStatus.OK, ("channel-b",))
    broadcast = await presence.route(room_key="room", sender="a", target=None)
    assert sorted(broadcast.channels) == ["channel-b", "channel-c"]


async def test_concurrent_first_joins_create_one_session(presence: Presence) -> None:
    outcomes = await asyncio.gather(*(join(presence, f"s{i}") for i in range(10)))
    assert [o.status for o in outcomes].count(JoinStatus.CREATED) == 1
    assert sorted(len(o.members) for o in outcomes) == list(range(1, 11))
    assert len({o.session.session_id for o in outcomes}) == 1


async def test_concurrent_joins_never_exceed_capacity(presence: Presence) -> None:
    outcomes = await asyncio.gather(*(join(presence, f"s{i}", capacity=4) for i in range(12)))
    assert [o.status for o in outcomes].count(JoinStatus.FULL) == 8
    assert len(await presence.members(room_key="room")) == 4


async def test_a_forwarding_route_publishes_once_per_other_process_and_returns_this_ones(redis_url: str) -> None:
    """Tests that the Redis store, given a Forward, sends the frame to each other
    process's inbox once (as channels_redis's pub/sub layer delivers it) and returns
    only this process's channels; with a target, only the target's."""
    layer = RedisPubSubChannelLayer(hosts=[{"address": redis_url, "socket_timeout": None}])
    store = RedisPresence(redis_url, lease_secs=LEASE_SECS)
    try:
        inbox = await layer.new_channel("other.")
        members = {"a": "mine#a", "b": f"{inbox}#b", "c": f"{inbox}#c", "d": "mine#d"}
        for socket_id, channel in members.items():
            participant = member(socket_id).participant
            await store.join(new_session=session(), member=Member(participant, channel), capacity=16, group_ids=ANYONE)
        forward = Forward("mine", "calls.deliver", "webrtc:ice-candidate", b'{"candidate":""}')

        broadcast = await store.route(room_key="room", sender="a", target=None, forward=forward)
        assert broadcast == Route(RouteStatus.OK, ("mine#d",))
        message = await asyncio.wait_for(layer.receive(inbox), 5)
        data = message.pop("data")
        assert message == {"type": "calls.deliver", "to": ["b", "c"], "event": forward.event}
        assert (data.encode() if isinstance(data, str) else data) == forward.data

        targeted = await store.route(room_key="room", sender="a", target="c", forward=forward)
        assert targeted == Route(RouteStatus.OK, ())
        assert (await asyncio.wait_for(layer.receive(inbox), 5)).items() >= (message | {"to": ["c"]}).items()
        local = await store.route(room_key="room", sender="a", target="d", forward=forward)
        assert local == Route(RouteStatus.OK, ("mine#d",))
        refused = await store.route(room_key="room", sender="x", target="c", forward=forward)
        assert refused.status is RouteStatus.SENDER_NOT_IN_ROOM
        with pytest.raises(TimeoutError):  # nothing was published for the refused route
            await asyncio.wait_for(layer.receive(inbox), 0.3)
    finally:
        await store.close()
        await layer.flush()


async def test_routes_made_in_one_pass_each_get_their_own_answer(redis_url: str) -> None:
    """Tests that the Redis store's batched routes answer every call as if alone (errors
    included), survive Redis forgetting its scripts, and that a caller cancelled while
    its batch forms strands no one."""
    store = RedisPresence(redis_url, lease_secs=LEASE_SECS)
    try:
        for socket_id in "abc":
            await join(store, socket_id)
        await join(store, "x", "other")
        routes = await asyncio.gather(
            store.route(room_key="room", sender="a", target="b"),
            store.route(room_key="room", sender="x", target="b"),
            store.route(room_key="nowhere", sender="a", target="b"),
            store.route(room_key="room", sender="a", target=None),
        )
        assert routes[0] == Route(RouteStatus.OK, ("channel-b",))
        assert routes[1].status is RouteStatus.SENDER_NOT_IN_ROOM
        assert routes[2].status is RouteStatus.NO_ROOM
        assert sorted(routes[3].channels) == ["channel-b", "channel-c"]

        await store.redis.script_flush()  # as after a Redis restart
        again = await asyncio.gather(*(store.route(room_key="room", sender="a", target="c") for _ in range(5)))
        assert again == [Route(RouteStatus.OK, ("channel-c",))] * 5

        first = asyncio.create_task(store.route(room_key="room", sender="a", target="b"))
        second = asyncio.create_task(store.route(room_key="room", sender="b", target="c"))
        await asyncio.sleep(0)  # both have started: the first waits for its batch, the second joined it
        first.cancel()
        assert await asyncio.wait_for(second, 5) == Route(RouteStatus.OK, ("channel-c",))
        with pytest.raises(asyncio.CancelledError):
            await first
    finally:
        await store.close()


# ---------------------------------------------------------------------------
# Only a shared store: several processes, leases, Redis failures
# ---------------------------------------------------------------------------


@pytest.fixture
async def processes(redis_url: str) -> AsyncIterator[list[RedisPresence]]:
    """Three stores on one Redis, as three server processes would have."""
    stores = [RedisPresence(redis_url, lease_secs=LEASE_SECS, server_id=f"server{i}") for i in range(3)]
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


async def test_processes_creating_one_room_at_once_make_one_session(processes: list[RedisPresence]) -> None:
    outcomes = await asyncio.gather(*(join(processes[i % 3], f"s{i}") for i in range(12)))
    assert [o.status for o in outcomes].count(JoinStatus.CREATED) == 1
    assert sorted(len(o.members) for o in outcomes) == list(range(1, 13))
    assert len({o.session.session_id for o in outcomes}) == 1


async def test_a_dead_process_is_reaped_exactly_once(processes: list[RedisPresence]) -> None:
    alive, other, dead = processes
    await join(alive, "a")
    await join(dead, "d1")
    await join(dead, "d2", "second")
    await join(other, "o")
    await asyncio.sleep(LEASE_SECS * 1.5)  # the dead one stops beating; its lease runs out
    await alive.heartbeat()
    await other.heartbeat()
    reaped = await asyncio.gather(alive.reap(), other.reap())
    departures = reaped[0] + reaped[1]
    assert sorted(d.participant.socket_id for d in departures) == ["d1", "d2"]
    by_socket = {d.participant.socket_id: d for d in departures}
    assert socket_ids(by_socket["d1"].remaining) == ["a", "o"]
    assert by_socket["d2"].room_emptied
    assert socket_ids(await alive.members(room_key="room")) == ["a", "o"]
    assert await alive.session(room_key="second") is None
    assert await alive.reap() == []


async def test_connections_of_a_user_are_counted_across_processes_and_freed_with_a_dead_one(
    processes: list[RedisPresence],
) -> None:
    alive, other, dead = processes
    assert await alive.open_connection(user_id="7", socket_id="a", channel_name="ch-a", limit=3)
    assert await dead.open_connection(user_id="7", socket_id="d", channel_name="ch-d", limit=3)
    assert await other.open_connection(user_id="7", socket_id="o", channel_name="ch-o", limit=3)
    assert not await other.open_connection(user_id="7", socket_id="o2", channel_name="ch-o2", limit=3)
    assert sorted(await alive.connections_of(user_id="7")) == ["ch-a", "ch-d", "ch-o"]
    await asyncio.sleep(LEASE_SECS * 1.5)  # the dead one stops beating; its lease runs out
    await alive.heartbeat()
    await other.heartbeat()
    await alive.reap()
    assert await other.open_connection(user_id="7", socket_id="o2", channel_name="ch-o2", limit=3)
    await alive.close_connection(user_id="7", socket_id="a")
    assert sorted(await other.connections_of(user_id="7")) == ["ch-o", "ch-o2"]


async def test_a_live_process_is_never_reaped(processes: list[RedisPresence]) -> None:
    first, second, _ = processes
    await join(first, "a")
    await join(second, "b")
    for _ in range(4):
        await asyncio.sleep(LEASE_SECS / 3)
        await first.heartbeat()
        await second.heartbeat()
        assert await first.reap() == []
    assert socket_ids(await first.members(room_key="room")) == ["a", "b"]


async def test_a_process_declared_dead_learns_it_on_its_next_beat(processes: list[RedisPresence]) -> None:
    survivor, slow, _ = processes
    await join(survivor, "a")
    await join(slow, "b")
    await asyncio.sleep(LEASE_SECS * 1.5)
    await survivor.heartbeat()
    assert [d.participant.socket_id for d in await survivor.reap()] == ["b"]
    with pytest.raises(PresenceEvicted) as evicted:
        await slow.heartbeat()
    assert evicted.value.channels == ["channel-b"]
    await slow.heartbeat()  # back as a new server, holding nothing
    assert socket_ids(await survivor.members(room_key="room")) == ["a"]


async def test_members_are_put_back_after_redis_lost_its_data(
    processes: list[RedisPresence], redis_server: object
) -> None:
    first, second, _ = processes
    for store, socket_id in ((first, "a"), (second, "b"), (first, "c")):
        await join(store, socket_id)
    await first.leave(room_key="room", socket_id="c")
    redis_server.flush()  # type: ignore[attr-defined] - a restart without persistence
    await first.heartbeat()
    await second.heartbeat()
    members = await first.members(room_key="room")
    assert socket_ids(members) == ["a", "b"]
    assert (await first.session(room_key="room")).session_id == "s-a"
    route = await second.route(room_key="room", sender="b", target="a")
    assert route.channels == ("channel-a",)


async def test_a_route_while_this_process_puts_its_members_back_is_unavailable_not_not_found(
    processes: list[RedisPresence], redis_server: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between registering again and having every member back, a route that finds
    nothing must answer "unavailable" (internal-error, retry), not "not found"."""
    first, second, _ = processes
    await join(first, "a")
    await join(second, "b")
    redis_server.flush()  # type: ignore[attr-defined] - a restart without persistence
    restoring, go_on = asyncio.Event(), asyncio.Event()
    restore_held = first._restore_held

    async def held_restore() -> None:
        restoring.set()
        await go_on.wait()
        await restore_held()

    monkeypatch.setattr(first, "_restore_held", held_restore)
    beat = asyncio.create_task(first.heartbeat())
    await asyncio.wait_for(restoring.wait(), 5)
    with pytest.raises(PresenceUnavailable):
        await first.route(room_key="room", sender="a", target="b")
    go_on.set()
    await beat
    assert socket_ids(await first.members(room_key="room")) == ["a"]


async def test_an_unreachable_redis_raises_presence_unavailable(redis_server: object) -> None:
    from tests.servers import free_port

    store = RedisPresence(f"redis://127.0.0.1:{free_port()}/0", lease_secs=LEASE_SECS)
    try:
        with pytest.raises(PresenceUnavailable):
            await join(store, "a")
        with pytest.raises(PresenceUnavailable):
            await store.route(room_key="room", sender="a", target=None)
    finally:
        await store.close()


# -- parked participants (docs/protocol.md §6) ------------------------------------


def parking(socket_id: str, *, user_id: str = "1", epoch: int = 0, grace: float = 60, **kwargs: Any) -> Parking:
    options: dict[str, Any] = {"offset": 7, "capacity": 4} | kwargs
    return Parking(socket_id, user_id, epoch, options.pop("offset"), grace, options.pop("capacity"), **options)


async def test_a_parked_member_keeps_its_place_and_resumes_with_its_buffer_in_order(presence: Presence) -> None:
    await join(presence, "a")
    await join(presence, "b")
    await presence.open_connection(user_id="1", socket_id="a", channel_name="channel-a", limit=10)
    await presence.park(parking("a", pending=(("e", b"0"),), fence="inbox"))

    assert socket_ids(await presence.members(room_key="room")) == ["a", "b"]
    route = await presence.route(room_key="room", sender="b", target="a")
    assert route == Route(RouteStatus.OK, (parked_channel("a"),))
    await presence.buffer(socket_ids=["a"], message=("e", b"2"))
    assert await presence.buffer_late(socket_id="a", user_id="1", epoch=0, message=("e", b"1")) is None
    unsealed = await presence.resume(socket_id="a", user_id="1", epoch=0, channel_name="new-a", force=False)
    assert unsealed.status is ResumeStatus.UNSEALED
    await presence.seal(socket_id="a", epoch=0)

    resumed = await presence.resume(socket_id="a", user_id="1", epoch=0, channel_name="new-a", force=False)

    assert resumed.status is ResumeStatus.RESUMED
    assert [data for _, data in resumed.missed] == [b"0", b"1", b"2"]  # before the park first
    assert (resumed.session.key, resumed.participant.socket_id, resumed.offset) == ("room", "a", 7)
    assert await presence.route(room_key="room", sender="b", target="a") == Route(RouteStatus.OK, ("new-a",))
    assert await presence.connections_of(user_id="1") == ("new-a",)
    again = await presence.resume(socket_id="a", user_id="1", epoch=0, channel_name="x", force=True)
    assert again == Resumption(ResumeStatus.LIVE, channel="new-a")  # it is live: nothing to resume
    assert await presence.parked_count() == 0


async def test_a_message_routed_to_a_parked_member_that_resumed_since_goes_where_it_is_now(
    presence: Presence,
) -> None:
    # Routing and buffering are two calls when presence does not forward: the member
    # may resume between them, and the message must then follow it, not vanish.
    await join(presence, "a")
    await join(presence, "b")
    await presence.park(parking("a"))
    routed = await presence.route(room_key="room", sender="b", target="a")
    assert routed == Route(RouteStatus.OK, (parked_channel("a"),))
    resumed = await presence.resume(socket_id="a", user_id="1", epoch=0, channel_name="new-a", force=True)
    assert resumed.status is ResumeStatus.RESUMED

    assert await presence.buffer(socket_ids=["a", "b"], message=("e", b"1")) == ["new-a", "channel-b"]
    await presence.leave(room_key="room", socket_id="b")
    assert await presence.buffer(socket_ids=["b", "gone"], message=("e", b"2")) == []  # left: nobody to reach


async def test_a_resume_checks_the_user_and_the_epoch(presence: Presence) -> None:
    await join(presence, "a")
    await presence.park(parking("a", epoch=3))
    foreign = await presence.resume(socket_id="a", user_id="2", epoch=3, channel_name="x", force=True)
    used = await presence.resume(socket_id="a", user_id="1", epoch=2, channel_name="x", force=True)
    unknown = await presence.resume(socket_id="zz", user_id="1", epoch=0, channel_name="x", force=True)
    assert (foreign.status, used.status, unknown.status) == (
        ResumeStatus.FOREIGN,
        ResumeStatus.USED,
        ResumeStatus.UNKNOWN,
    )
    pid = await presence.resume(socket_id="a", user_id="1", epoch=None, channel_name="x", force=True)
    assert (pid.status, pid.epoch) == (ResumeStatus.RESUMED, 3)


async def test_a_full_buffer_drops_the_oldest_first_and_counts_them(presence: Presence) -> None:
    await join(presence, "a")
    await presence.park(parking("a", capacity=3, pending=(("e", b"0"), ("e", b"1"))))
    for n in range(2, 6):
        await presence.buffer(socket_ids=["a"], message=("e", str(n).encode()))
    resumed = await presence.resume(socket_id="a", user_id="1", epoch=0, channel_name="x", force=True)
    assert ([data for _, data in resumed.missed], resumed.dropped) == ([b"3", b"4", b"5"], 3)


async def test_parked_members_expire_once_and_leave_their_room(presence: Presence) -> None:
    await join(presence, "a")
    await join(presence, "b")
    await presence.park(parking("a", grace=0.05))
    await presence.park(parking("b", grace=60))
    await asyncio.sleep(0.1)  # the grace is what is tested
    expired = await asyncio.gather(presence.expire_parked(), presence.expire_parked())
    gone = expired[0] + expired[1]
    assert [(g.socket_id, g.departure.participant.socket_id) for g in gone] == [("a", "a")]
    assert socket_ids(gone[0].departure.remaining) == ["b"]
    assert socket_ids(await presence.members(room_key="room")) == ["b"]
    assert await presence.parked_count() == 1


async def test_a_dead_process_leaves_its_parked_members_to_their_grace(processes: list[RedisPresence]) -> None:
    alive, _, dead = processes
    await join(dead, "p")
    await join(dead, "q")
    await dead.park(parking("p"))
    await asyncio.sleep(LEASE_SECS * 1.5)
    await alive.heartbeat()
    departures = await alive.reap()
    assert [d.participant.socket_id for d in departures] == ["q"]
    resumed = await alive.resume(socket_id="p", user_id="1", epoch=0, channel_name="alive#p", force=True)
    assert resumed.status is ResumeStatus.RESUMED
    assert socket_ids(await alive.members(room_key="room")) == ["p"]


async def test_a_forwarding_route_buffers_for_a_parked_target(redis_url: str) -> None:
    store = RedisPresence(redis_url, lease_secs=LEASE_SECS)
    try:
        await join(store, "a")
        await join(store, "b")
        await store.park(parking("a"))
        forward = Forward("mine", "calls.deliver", "webrtc:offer", b'{"offer":1}')
        assert await store.route(room_key="room", sender="b", target="a", forward=forward) == Route(RouteStatus.OK)
        resumed = await store.resume(socket_id="a", user_id="1", epoch=0, channel_name="x", force=True)
        assert resumed.missed == (("webrtc:offer", b'{"offer":1}'),)
    finally:
        await store.close()
