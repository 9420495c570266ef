"""Tests of the HTTP API for calls (docs/protocol.md §11): the live rooms, the history and
one session; who sees what (nothing of a call leaks to a user outside it), pagination,
filters, and live rooms that match presence, also when another process holds them."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient
from django.test import Client as HttpClient

from accounts.models import User
from calls import process
from calls.api import HISTORY_PAGE_SIZE
from calls.models import CallParticipant, CallRing, CallRoom
from calls.presence.base import Member, Participant, Presence, PresenceUnavailable, RoomSession, room_key
from calls.presence.memory import InMemoryPresence
from calls.presence.redis import RedisPresence
from groups.models import Group, Membership
from tests.conftest import ConnectFactory, access_token, history_written, make_user
from tests.servers import Server, prepare_database, server_env, start_daphnes
from tests.wsclient import WsClient

pytestmark = pytest.mark.django_db(transaction=True)

T0 = dt.datetime(2026, 11, 26, 8, 0, tzinfo=dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def bearer(user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token(user)}"}


def user_ref(user: User) -> dict[str, str]:
    return {"userId": str(user.pk), "username": user.username, "displayName": user.shown_name}


def make_call(
    room_id: str,
    *,
    creator: User,
    group: Group | None = None,
    started_at: dt.datetime = T0,
    minutes: float | None = 10,
    stays: tuple[User, ...] = (),
) -> CallRoom:
    """A session row as the signaling server writes it: ``minutes`` long (None: live),
    with one stay per user of ``stays``, each the whole call ("left") or, live, still in it."""
    ended_at = None if minutes is None else started_at + dt.timedelta(minutes=minutes)
    call = CallRoom.objects.create(
        session_id=uuid.uuid4().hex,
        room_id=room_id,
        call_type="video",
        group=group,
        created_by=creator,
        metadata={"callType": "video", "createdAt": iso(started_at), "createdBy": str(creator.pk)}
        | ({"groupId": str(group.pk)} if group else {}),
        started_at=started_at,
        ended_at=ended_at,
        peak_participants=len(stays),
    )
    for index, user in enumerate(stays):
        CallParticipant.objects.create(
            call=call,
            user=user,
            socket_id=f"{call.session_id[:8]}-{index}",
            joined_at=started_at,
            left_at=ended_at,
            leave_reason="left" if ended_at else "",
        )
    return call


def history(client: HttpClient, user: User, query: str = "") -> dict[str, Any]:
    response = client.get(f"/api/calls/{query}", headers=bearer(user))
    assert response.status_code == 200, response.content
    return response.json()


def session_ids(page: dict[str, Any]) -> list[str]:
    return [call["sessionId"] for call in page["results"]]


@pytest.fixture
def other_team(dave: User) -> Group:
    """A group of dave's alone."""
    group = Group.objects.create(name="Elsewhere")
    Membership.objects.create(group=group, user=dave, role=Membership.Role.OWNER)
    return group


# ---------------------------------------------------------------------------
# Authentication
# ---------------------------------------------------------------------------


CALL_URLS = ["/api/calls/", "/api/calls/live/", f"/api/calls/{uuid.uuid4().hex}/"]


@pytest.mark.parametrize("url", CALL_URLS)
def test_every_endpoint_needs_a_credential(client: HttpClient, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["detail"]


@pytest.mark.parametrize("url", CALL_URLS)
def test_an_invalid_or_inactive_credential_is_401(client: HttpClient, url: str, alice: User) -> None:
    assert client.get(url, headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    headers = bearer(alice)
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert client.get(url, headers=headers).status_code == 401


@pytest.mark.parametrize("url", CALL_URLS[:2])
def test_a_session_works_like_a_token(client: HttpClient, url: str, alice: User, team: Group) -> None:
    make_call("standup", creator=alice, group=team, stays=(alice,))
    client.force_login(alice)
    response = client.get(url)
    assert response.status_code == 200
    assert response.json() == client.get(url, headers=bearer(alice)).json()


@pytest.mark.parametrize("url", CALL_URLS)
def test_the_endpoints_are_read_only(url: str, alice: User) -> None:
    """A session's write without its CSRF token is refused before anything (403); with a
    token, the method is not allowed (405)."""
    session_client = HttpClient(enforce_csrf_checks=True)
    session_client.force_login(alice)
    assert session_client.post(url, {}, content_type="application/json").status_code == 403
    assert HttpClient().post(url, {}, content_type="application/json", headers=bearer(alice)).status_code == 405
    assert HttpClient().delete(url, headers=bearer(alice)).status_code == 405


# ---------------------------------------------------------------------------
# GET /api/calls/: the history
# ---------------------------------------------------------------------------


def test_the_history_shows_a_session_as_it_was(
    client: HttpClient, alice: User, bob: User, carol: User, team: Group
) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    call = make_call("standup", creator=alice, group=team, started_at=T0.astimezone(paris), minutes=12.5)
    CallRoom.objects.filter(pk=call.pk).update(ended_by=bob, peak_participants=2)

    assert history(client, carol) == {
        "count": 1,
        "next": None,
        "previous": None,
        "results": [
            {
                "sessionId": call.session_id,
                "callRoomId": "standup",
                "groupId": str(team.pk),
                "callType": "video",
                "live": False,
                "startedAt": "2026-11-26T08:00:00.000Z",
                "endedAt": "2026-11-26T08:12:30.000Z",
                "durationSecs": 750.0,
                "createdBy": user_ref(alice),
                "endedBy": user_ref(bob),
                "peakParticipants": 2,
            }
        ],
    }


def test_the_history_has_the_callers_groups_and_the_calls_it_took_part_in(
    client: HttpClient, alice: User, bob: User, dave: User, team: Group, other_team: Group
) -> None:
    of_team = make_call("team-call", creator=bob, group=team, started_at=T0, stays=(bob,))  # alice not in it
    with_dave = make_call("open", creator=dave, started_at=T0 + dt.timedelta(hours=1), stays=(dave, alice))
    live = make_call("live", creator=alice, started_at=T0 + dt.timedelta(hours=2), minutes=None, stays=(alice,))
    make_call("dave-alone", creator=dave, started_at=T0 + dt.timedelta(hours=3), stays=(dave,))
    make_call("dave-group", creator=dave, group=other_team, started_at=T0 + dt.timedelta(hours=4), stays=(dave,))

    page = history(client, alice)

    assert session_ids(page) == [live.session_id, with_dave.session_id, of_team.session_id]  # newest first
    assert page["results"][0]["live"] is True
    assert page["results"][0]["endedAt"] is None and page["results"][0]["durationSecs"] is None


def test_a_user_outside_the_calls_sees_nothing_of_them(
    client: HttpClient, alice: User, bob: User, dave: User, team: Group
) -> None:
    calls = [
        make_call("team-call", creator=alice, group=team, stays=(alice, bob)),
        make_call("open", creator=alice, stays=(alice,)),
        make_call("live", creator=alice, group=team, minutes=None, stays=(alice,)),
    ]

    assert history(client, dave) == {"count": 0, "next": None, "previous": None, "results": []}
    assert history(client, dave, f"?group={team.pk}")["results"] == []
    assert client.get("/api/calls/live/", headers=bearer(dave)).json() == []
    missing = client.get(f"/api/calls/{uuid.uuid4().hex}/", headers=bearer(dave))
    for call in calls:
        response = client.get(f"/api/calls/{call.session_id}/", headers=bearer(dave))
        assert response.status_code == 404
        assert response.json() == missing.json()  # the same 404 as a session that does not exist
        assert call.session_id not in response.content.decode()


def test_a_former_member_keeps_the_calls_it_took_part_in(
    client: HttpClient, alice: User, bob: User, team: Group
) -> None:
    took_part = make_call("with-bob", creator=alice, group=team, stays=(alice, bob))
    make_call("without-bob", creator=alice, group=team, started_at=T0 + dt.timedelta(hours=1), stays=(alice,))
    Membership.objects.filter(user=bob, group=team).delete()

    assert session_ids(history(client, bob)) == [took_part.session_id]


def test_the_history_is_paginated_by_twenty(client: HttpClient, alice: User, team: Group) -> None:
    total = 2 * HISTORY_PAGE_SIZE + 5
    calls = [
        make_call(f"call-{i}", creator=alice, group=team, started_at=T0 + dt.timedelta(minutes=i)) for i in range(total)
    ]
    newest_first = [call.session_id for call in reversed(calls)]

    first = history(client, alice)
    assert HISTORY_PAGE_SIZE == 20
    assert first["count"] == total
    assert first["previous"] is None
    assert first["next"].endswith("/api/calls/?page=2")
    pages = [first, history(client, alice, "?page=2"), history(client, alice, "?page=3")]
    assert [len(page["results"]) for page in pages] == [20, 20, 5]
    assert [sid for page in pages for sid in session_ids(page)] == newest_first
    assert pages[2]["next"] is None
    assert client.get("/api/calls/?page=4", headers=bearer(alice)).status_code == 404
    assert client.get("/api/calls/?page=last", headers=bearer(alice)).json() == pages[2]


def test_the_history_filters_by_group(
    client: HttpClient, alice: User, bob: User, team: Group, other_team: Group
) -> None:
    second = Group.objects.create(name="Second")
    Membership.objects.create(group=second, user=alice)
    of_team = make_call("a", creator=alice, group=team)
    of_second = make_call("b", creator=alice, group=second, started_at=T0 + dt.timedelta(hours=1))
    make_call("c", creator=alice, stays=(alice,), started_at=T0 + dt.timedelta(hours=2))

    assert session_ids(history(client, alice, f"?group={team.pk}")) == [of_team.session_id]
    assert session_ids(history(client, alice, f"?group={second.pk}")) == [of_second.session_id]
    assert history(client, alice, f"?group={other_team.pk}")["results"] == []  # not hers: nothing, not 403
    assert history(client, alice, "?group=999999")["results"] == []
    for bad in ("x", "0", "-1", "1.5"):
        response = client.get(f"/api/calls/?group={bad}", headers=bearer(alice))
        assert response.status_code == 400
        assert list(response.json()) == ["group"]


def test_the_history_filters_by_date(client: HttpClient, alice: User, team: Group) -> None:
    days = {
        day: make_call(
            f"day-{day}", creator=alice, group=team, started_at=dt.datetime(2026, 11, day, 23, 30, tzinfo=dt.UTC)
        )
        for day in (24, 25, 26)
    }

    def days_of(query: str) -> list[int]:
        ids = session_ids(history(client, alice, query))
        return sorted(day for day, call in days.items() if call.session_id in ids)

    assert days_of("?since=2026-11-25") == [25, 26]
    assert days_of("?until=2026-11-25") == [24, 25]  # a date runs to its end
    assert days_of("?since=2026-11-25&until=2026-11-25") == [25]
    assert days_of("?since=2026-11-25T23:30:00Z") == [25, 26]  # a time is inclusive
    assert days_of("?until=2026-11-25T23:30:00Z") == [24, 25]
    assert days_of("?until=2026-11-25T23:29:59.999Z") == [24]
    assert days_of("?since=2026-11-25T23:30:00") == [25, 26]  # without an offset: UTC
    assert days_of("?since=2026-11-26T00:30:00%2B01:00") == [25, 26]  # 23:30 UTC
    assert days_of(f"?since=2026-11-25&group={team.pk}") == [25, 26]
    assert days_of("?since=2026-11-27") == []
    for bad in ("yesterday", "2026-02-30", "2026-11-26T25:00", "26/11/2026"):
        response = client.get(f"/api/calls/?since={bad}", headers=bearer(alice))
        assert response.status_code == 400, bad
        assert list(response.json()) == ["since"]
        assert client.get(f"/api/calls/?until={bad}", headers=bearer(alice)).status_code == 400


# ---------------------------------------------------------------------------
# GET /api/calls/<sessionId>/: one session
# ---------------------------------------------------------------------------


def test_a_session_shows_its_participants_counts_and_rings(
    client: HttpClient, alice: User, bob: User, carol: User, team: Group
) -> None:
    call = make_call("standup", creator=alice, group=team, minutes=None)
    CallRoom.objects.filter(pk=call.pk).update(offers_relayed=4, answers_relayed=3, candidates_relayed=17)
    CallParticipant.objects.create(
        call=call, user=alice, socket_id="sock-a", joined_at=T0, resumes=2, media_changes=5
    )  # still in it
    CallParticipant.objects.create(
        call=call,
        user=bob,
        socket_id="sock-b",
        joined_at=T0 + dt.timedelta(seconds=5),
        left_at=T0 + dt.timedelta(seconds=65, milliseconds=250),
        leave_reason="disconnected",
    )
    CallRing.objects.create(
        call=call,
        ring_id="ring-1",
        ringer=alice,
        callee=bob,
        started_at=T0 + dt.timedelta(seconds=1),
        expires_at=T0 + dt.timedelta(seconds=31),
        ended_at=T0 + dt.timedelta(seconds=5),
        outcome="accepted",
    )
    CallRing.objects.create(
        call=call,
        ring_id="ring-1",
        ringer=alice,
        callee=carol,
        started_at=T0 + dt.timedelta(seconds=1),
        expires_at=T0 + dt.timedelta(seconds=31),
    )  # still ringing

    response = client.get(f"/api/calls/{call.session_id}/", headers=bearer(carol))

    assert response.status_code == 200
    assert response.json() == {
        "sessionId": call.session_id,
        "callRoomId": "standup",
        "groupId": str(team.pk),
        "callType": "video",
        "live": True,
        "startedAt": "2026-11-26T08:00:00.000Z",
        "endedAt": None,
        "durationSecs": None,
        "createdBy": user_ref(alice),
        "endedBy": None,
        "peakParticipants": 0,
        "metadata": {"callType": "video", "createdAt": "2026-11-26T08:00:00.000Z", "createdBy": str(alice.pk)}
        | {"groupId": str(team.pk)},
        "offersRelayed": 4,
        "answersRelayed": 3,
        "candidatesRelayed": 17,
        "participants": [
            {
                "user": user_ref(alice),
                "socketId": "sock-a",
                "joinedAt": "2026-11-26T08:00:00.000Z",
                "leftAt": None,
                "durationSecs": None,
                "leaveReason": None,
                "resumes": 2,
                "mediaChanges": 5,
            },
            {
                "user": user_ref(bob),
                "socketId": "sock-b",
                "joinedAt": "2026-11-26T08:00:05.000Z",
                "leftAt": "2026-11-26T08:01:05.250Z",
                "durationSecs": 60.25,
                "leaveReason": "disconnected",
                "resumes": 0,
                "mediaChanges": 0,
            },
        ],
        "rings": [
            {
                "ringId": "ring-1",
                "callee": user_ref(bob),
                "ringer": user_ref(alice),
                "outcome": "accepted",
                "startedAt": "2026-11-26T08:00:01.000Z",
                "expiresAt": "2026-11-26T08:00:31.000Z",
                "endedAt": "2026-11-26T08:00:05.000Z",
            },
            {
                "ringId": "ring-1",
                "callee": user_ref(carol),
                "ringer": user_ref(alice),
                "outcome": None,
                "startedAt": "2026-11-26T08:00:01.000Z",
                "expiresAt": "2026-11-26T08:00:31.000Z",
                "endedAt": None,
            },
        ],
    }


def test_a_session_with_deleted_users_shows_them_as_null(client: HttpClient, alice: User, team: Group) -> None:
    gone = make_user("gone")
    call = make_call("standup", creator=gone, group=team, stays=(gone, alice))
    gone.delete()

    body = client.get(f"/api/calls/{call.session_id}/", headers=bearer(alice)).json()

    assert body["createdBy"] is None
    assert [stay["user"] for stay in body["participants"]] == [None, user_ref(alice)]


def test_a_session_is_seen_by_exactly_those_who_could_list_it(
    client: HttpClient, alice: User, bob: User, carol: User, dave: User, team: Group
) -> None:
    grouped = make_call("team-call", creator=alice, group=team, stays=(alice,))
    ungrouped = make_call("open", creator=alice, stays=(alice, dave))

    def status(user: User, call: CallRoom) -> int:
        return client.get(f"/api/calls/{call.session_id}/", headers=bearer(user)).status_code

    assert [status(u, grouped) for u in (alice, bob, carol, dave)] == [200, 200, 200, 404]
    assert [status(u, ungrouped) for u in (alice, bob, carol, dave)] == [200, 404, 404, 200]
    for user in (alice, bob, carol, dave):
        listed = session_ids(history(client, user))
        assert [call.session_id in listed for call in (grouped, ungrouped)] == [
            status(user, call) == 200 for call in (grouped, ungrouped)
        ]


# ---------------------------------------------------------------------------
# GET /api/calls/live/: the live rooms, from presence
# ---------------------------------------------------------------------------


async def live(async_client: AsyncClient, user: User) -> list[dict[str, Any]]:
    response = await async_client.get("/api/calls/live/", headers=bearer(user))
    assert response.status_code == 200, response.content
    body: list[dict[str, Any]] = response.json()
    return body


async def test_a_group_call_is_live_with_whoever_is_in_it(
    connect: ConnectFactory, async_client: AsyncClient, alice: User, bob: User, carol: User, dave: User, team: Group
) -> None:
    a, b = await connect(alice), await connect(bob)
    joined_a = await a.join("standup", callType="audio", metadata={"groupId": team.pk})
    joined_b = await b.join("standup", metadata={"groupId": team.pk})
    await a.expect("webrtc:participant-joined")
    await history_written()
    call = await CallRoom.objects.aget(room_id="standup")

    expected = {
        "sessionId": call.session_id,
        "callRoomId": "standup",
        "groupId": str(team.pk),
        "callType": "audio",
        "startedAt": joined_a["metadata"]["createdAt"],
        "locked": False,
        "participants": [joined_a["participant"], joined_b["participant"]],
    }
    assert await live(async_client, carol) == [expected]  # a member, not in the call
    assert await live(async_client, alice) == [expected]
    assert await live(async_client, dave) == []  # outside the group

    await b.leave("standup")
    await a.expect("webrtc:participant-left")
    assert (await live(async_client, carol))[0]["participants"] == [joined_a["participant"]]

    await a.close()
    assert await live(async_client, carol) == []  # gone at once, whatever the history says yet
    await history_written()
    assert await live(async_client, carol) == []


async def test_a_room_without_a_group_is_live_for_its_creator_and_those_in_it(
    connect: ConnectFactory, async_client: AsyncClient, alice: User, bob: User, carol: User, dave: User, team: Group
) -> None:
    a, b, d = await connect(alice), await connect(bob), await connect(dave)
    await a.join("open-room")
    await b.join("open-room")
    await a.expect("webrtc:participant-joined")
    await d.join("open-room")
    await a.expect("webrtc:participant-joined")
    await b.expect("webrtc:participant-joined")
    await history_written()

    for user in (alice, bob, dave):
        assert [room["callRoomId"] for room in await live(async_client, user)] == ["open-room"]
    assert await live(async_client, carol) == []  # alice's group mate, but not in this room

    await b.leave("open-room")
    await a.expect("webrtc:participant-left")
    await d.expect("webrtc:participant-left")
    await history_written()
    assert await live(async_client, bob) == []  # it took part, but is not in it any more
    await a.leave("open-room")
    await d.expect("webrtc:participant-left")
    await history_written()
    assert [room["groupId"] for room in await live(async_client, alice)] == [None]  # its creator
    assert [len(room["participants"]) for room in await live(async_client, dave)] == [1]
    await d.leave("open-room")
    for user in (alice, bob, dave):
        assert await live(async_client, user) == []


async def test_live_rooms_are_listed_newest_first_with_their_lock(
    connect: ConnectFactory, async_client: AsyncClient, alice: User, bob: User, team: Group
) -> None:
    second = await Group.objects.acreate(name="Second")
    await Membership.objects.acreate(group=second, user=alice)
    await Membership.objects.acreate(group=second, user=bob)
    a, b = await connect(alice), await connect(bob)
    await a.join("first", metadata={"groupId": team.pk})
    await b.join("second", metadata={"groupId": second.pk})
    await history_written()
    await process.current().presence.set_locked(room_key=room_key("first", str(team.pk)), locked=True)

    rooms = await live(async_client, alice)

    assert [(room["callRoomId"], room["locked"]) for room in rooms] == [("second", False), ("first", True)]
    assert rooms[0]["startedAt"] > rooms[1]["startedAt"]


async def test_only_the_session_presence_holds_is_live(async_client: AsyncClient, alice: User, team: Group) -> None:
    """An open row presence does not hold (its end not yet written, or lost with a
    process) is not live, nor is an open row of an earlier session of a live room."""
    await CallRoom.objects.acreate(
        session_id="ghost", room_id="ghost-room", call_type="video", group=team, created_by=alice, started_at=T0
    )
    stale = await CallRoom.objects.acreate(
        session_id="stale", room_id="standup", call_type="video", group=team, created_by=alice, started_at=T0
    )
    presence = process.current().presence
    current = await join_presence(presence, "standup", str(team.pk), session_id="current", user=alice)
    assert stale.session_id != current.session_id

    assert await live(async_client, alice) == []


async def test_presence_that_cannot_be_reached_is_503(
    async_client: AsyncClient, monkeypatch: pytest.MonkeyPatch, alice: User, team: Group
) -> None:
    await call_row("standup", team, alice)

    async def unreachable(**kwargs: Any) -> None:
        raise PresenceUnavailable("connection refused")

    monkeypatch.setattr(process.current().presence, "session", unreachable)
    response = await async_client.get("/api/calls/live/", headers=bearer(alice))
    assert response.status_code == 503
    assert response.json()["detail"]


async def call_row(room_id: str, group: Group | None, creator: User, session_id: str = "") -> CallRoom:
    return await CallRoom.objects.acreate(
        session_id=session_id or uuid.uuid4().hex,
        room_id=room_id,
        call_type="video",
        group=group,
        created_by=creator,
        started_at=T0,
    )


async def join_presence(
    presence: Presence, room_id: str, group_id: str | None, *, session_id: str, user: User, socket_id: str = ""
) -> RoomSession:
    """``user`` joins through ``presence`` itself, as a server process would."""
    metadata = {"callType": "video", "createdAt": iso(T0), "createdBy": str(user.pk)}
    participant = Participant(
        socket_id or uuid.uuid4().hex, str(user.pk), user.username, user.shown_name, iso(T0), video=True
    )
    outcome = await presence.join(
        new_session=RoomSession(room_id, session_id, metadata, group_id),
        member=Member(participant, f"elsewhere#{participant.socket_id}"),
        capacity=16,
        group_ids=frozenset({group_id} if group_id else ()),
    )
    assert outcome.session is not None
    return outcome.session


@pytest.fixture
async def redis_presence(settings: Any, redis_url: str) -> AsyncIterator[RedisPresence]:
    """This process's presence in Redis, shared with ``other_process``."""
    settings.REDIS_URL = redis_url
    settings.CALLS_PRESENCE_BACKEND = "calls.presence.redis.RedisPresence"
    presence = process.current().presence
    assert isinstance(presence, RedisPresence)
    yield presence
    await presence.close()


@pytest.fixture
async def other_process(redis_url: str) -> AsyncIterator[RedisPresence]:
    """The presence of another server process sharing the same Redis."""
    store = RedisPresence(redis_url, lease_secs=30, server_id="other-process")
    yield store
    await store.close()


async def test_live_rooms_held_by_another_process_are_listed(
    async_client: AsyncClient,
    redis_presence: RedisPresence,
    other_process: RedisPresence,
    alice: User,
    bob: User,
    dave: User,
    team: Group,
) -> None:
    call = await call_row("standup", team, bob)
    await join_presence(other_process, "standup", str(team.pk), session_id=call.session_id, user=bob, socket_id="b1")
    key = room_key("standup", str(team.pk))
    await other_process.set_locked(room_key=key, locked=True)

    rooms = await live(async_client, alice)

    assert [(r["sessionId"], r["locked"]) for r in rooms] == [(call.session_id, True)]
    assert [(p["socketId"], p["userId"], p["media"]) for p in rooms[0]["participants"]] == [
        ("b1", str(bob.pk), {"audio": True, "video": True, "screen": False})
    ]
    assert await live(async_client, dave) == []

    await other_process.leave(room_key=key, socket_id="b1")
    assert await live(async_client, alice) == []  # the row is still open: presence says it is over


async def http_get(server: Server, path: str, token: str) -> tuple[int, Any]:
    """``GET`` on a real server process, off the event loop."""

    def get() -> tuple[int, Any]:
        request = urllib.request.Request(f"{server.http}{path}", headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    return await asyncio.to_thread(get)


async def test_every_process_lists_the_rooms_of_every_process(
    tmp_path: Path, redis_url: str, ws_clients: list[WsClient]
) -> None:
    """Two daphne processes sharing Redis and a database: a call whose participants are
    on both is listed alike by each, and is gone from both once they left."""
    env = server_env(tmp_path / "db.sqlite3", REDIS_URL=redis_url)
    await asyncio.to_thread(prepare_database, env)
    servers = await asyncio.to_thread(start_daphnes, env, [tmp_path / "daphne0.log", tmp_path / "daphne1.log"])
    try:
        tokens = {user: await asyncio.to_thread(servers[0].token, user) for user in ("alice", "bob", "carol", "dave")}
        _, [group] = await http_get(servers[0], "/api/groups/", tokens["carol"])
        alice = await WsClient.open(servers[0].ws, tokens["alice"])
        bob = await WsClient.open(servers[1].ws, tokens["bob"])
        ws_clients += [alice, bob]
        room = f"group-{group['id']}"
        joined_a = await alice.join(room, metadata={"groupId": group["id"]})
        joined_b = await bob.join(room, metadata={"groupId": group["id"]})
        await alice.expect("webrtc:participant-joined")

        async def live_on(server: Server, user: str) -> list[dict[str, Any]]:
            deadline = time.monotonic() + 5  # until the first joiner's row is written
            while True:
                status, rooms = await http_get(server, "/api/calls/live/", tokens[user])
                assert status == 200, rooms
                if rooms or time.monotonic() > deadline or user == "dave":
                    return rooms
                await asyncio.sleep(0.05)

        for server in servers:
            [call] = await live_on(server, "carol")
            assert call["callRoomId"] == room and call["groupId"] == group["id"]
            assert call["participants"] == [joined_a["participant"], joined_b["participant"]]
            assert await live_on(server, "dave") == []
        status, detail = await http_get(servers[1], f"/api/calls/{call['sessionId']}/", tokens["carol"])
        assert status == 200 and detail["live"] is True
        assert (await http_get(servers[1], f"/api/calls/{call['sessionId']}/", tokens["dave"]))[0] == 404

        await alice.close()
        await bob.expect("webrtc:participant-left")
        await bob.close()
        for server in servers:
            for _ in range(100):  # a closed socket leaves a moment after the close
                if (await http_get(server, "/api/calls/live/", tokens["carol"]))[1] == []:
                    break
                await asyncio.sleep(0.05)
            assert (await http_get(server, "/api/calls/live/", tokens["carol"]))[1] == []
        for server in servers:
            assert "Traceback" not in server.log(), server.log()
    finally:
        for server in servers:
            server.stop()


# ---------------------------------------------------------------------------
# Presence.locked, on both stores
# ---------------------------------------------------------------------------


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Presence]:
    if request.param == "memory":
        yield InMemoryPresence()
        return
    redis_store = RedisPresence(request.getfixturevalue("redis_url"), lease_secs=30)
    yield redis_store
    await redis_store.close()


async def test_locked_reads_the_rooms_lock(store: Presence, alice: User) -> None:
    key = room_key("room", None)
    assert await store.locked(room_key=key) is False  # no room
    await join_presence(store, "room", None, session_id="s1", user=alice, socket_id="a1")
    assert await store.locked(room_key=key) is False
    await store.set_locked(room_key=key, locked=True)
    assert await store.locked(room_key=key) is True
    assert await store.locked(room_key=room_key("room", "7")) is False  # the same id in a group is another room
    await store.set_locked(room_key=key, locked=False)
    assert await store.locked(room_key=key) is False
    await store.set_locked(room_key=key, locked=True)
    await store.leave(room_key=key, socket_id="a1")
    assert await store.locked(room_key=key) is False  # the lock ended with the session
    await join_presence(store, "room", None, session_id="s2", user=alice, socket_id="a2")
    assert await store.locked(room_key=key) is False
