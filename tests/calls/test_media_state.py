"""Tests that a participant's media follows docs/protocol.md §5 rule 11 (and the media
choices of docs/protocol.md): the defaults of a join, ``media`` on join-room, and
``webrtc:media-state`` told to the others only, seen by later joiners, and recorded."""

from __future__ import annotations

from typing import Any

import pytest

from accounts.models import User
from calls.models import CallParticipant
from groups.models import Group
from tests.calls.conftest import InRoom, all_silent
from tests.conftest import Client, ConnectFactory, history_written

pytestmark = pytest.mark.django_db(transaction=True)

ALL_ON = {"audio": True, "video": True, "screen": False}
AUDIO_ONLY = {"audio": True, "video": False, "screen": False}


async def media_state(client: Client, room: str, id: str | None = "m-1", **media: Any) -> None:
    """Send a media-state; with an ``id`` its ack must be the sender's next frame."""
    await client.send("webrtc:media-state", {"callRoomId": room, **media}, id=id)
    if id is not None:
        ack = await client.expect("webrtc:ack")
        assert ack == {"event": "webrtc:ack", "data": {"event": "webrtc:media-state"}, "id": id}, ack


async def updated(client: Client, room: str, sender: Client) -> dict[str, Any]:
    """The client's next frame is ``participant-updated`` for ``sender``: its participant."""
    frame = await client.expect("webrtc:participant-updated")
    assert frame["data"]["callRoomId"] == room, frame
    assert "id" not in frame, frame
    participant = frame["data"]["participant"]
    assert participant["socketId"] == sender.socket_id, frame
    return participant


# ---------------------------------------------------------------------------
# The media of a join
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("call_type", "media"), [(None, ALL_ON), ("video", ALL_ON), ("audio", AUDIO_ONLY)])
async def test_a_join_without_media_sends_audio_and_video_as_the_rooms_call_type(
    connect: ConnectFactory, alice: User, bob: User, call_type: str | None, media: dict[str, bool]
) -> None:
    """Tests the defaults: audio on, video iff the room's callType is video, screen off."""
    extra = {"callType": call_type} if call_type else {}
    creator = await connect(alice)
    created = await creator.join("m-default", **extra)
    assert created["participant"]["media"] == media

    joiner = await connect(bob)
    joined = await joiner.join("m-default")

    assert joined["participant"]["media"] == media
    assert joined["existingParticipants"][0]["media"] == media
    announced = await creator.expect("webrtc:participant-joined")
    assert announced["data"]["participant"]["media"] == media
    assert (await creator.join("m-default"))["participant"]["media"] == media  # as it is now


async def test_a_joiner_without_media_follows_the_rooms_call_type_not_its_own(
    connect: ConnectFactory, alice: User, bob: User
) -> None:
    """Tests that video defaults to the ROOM's callType: a later joiner asking for video
    in an audio room sends no video, and one asking for audio in a video room does."""
    creator = await connect(alice)
    created = await creator.join("m-audio-room", callType="audio")
    assert created["participant"]["media"] == AUDIO_ONLY

    joiner = await connect(bob)
    joined = await joiner.join("m-audio-room", callType="video")

    assert joined["participant"]["media"] == AUDIO_ONLY
    assert joined["existingParticipants"][0]["media"] == AUDIO_ONLY
    announced = await creator.expect("webrtc:participant-joined")
    assert announced["data"]["participant"]["media"] == AUDIO_ONLY

    video_creator = await connect(alice)
    assert (await video_creator.join("m-video-room", callType="video"))["participant"]["media"] == ALL_ON
    video_joiner = await connect(bob)
    assert (await video_joiner.join("m-video-room", callType="audio"))["participant"]["media"] == ALL_ON


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ({"audio": False, "video": True}, {"audio": False, "video": True, "screen": False}),
        ({"audio": True, "video": False, "screen": True}, {"audio": True, "video": False, "screen": True}),
        ({"audio": False, "video": False, "screen": False}, {"audio": False, "video": False, "screen": False}),
    ],
)
async def test_join_room_media_is_the_participants_media_for_everyone(
    connect: ConnectFactory, alice: User, bob: User, carol: User, sent: dict[str, bool], expected: dict[str, bool]
) -> None:
    """Tests that ``media`` on join-room is what room-joined, participant-joined and a
    later joiner's existingParticipants show, screen false when left out, whatever the
    room's call type (an explicit video wins over the audio room's default)."""
    first = await connect(alice)
    await first.join("m-join-media", callType="audio")
    joiner = await connect(bob)

    joined = await joiner.join("m-join-media", media=sent)

    assert joined["participant"]["media"] == expected
    announced = await first.expect("webrtc:participant-joined")
    assert announced["data"]["participant"]["socketId"] == joiner.socket_id
    assert announced["data"]["participant"]["media"] == expected
    later = await (await connect(carol)).join("m-join-media")
    assert [p["media"] for p in later["existingParticipants"]] == [AUDIO_ONLY, expected]


@pytest.mark.parametrize(
    "media",
    [{"audio": True}, {"video": True}, {"audio": "yes", "video": True}, {"audio": True, "video": True, "screen": 1}],
)
async def test_join_room_with_malformed_media_is_invalid_and_joins_nothing(
    connect: ConnectFactory, alice: User, media: dict[str, Any]
) -> None:
    client = await connect(alice)
    await client.send("webrtc:join-room", {"callRoomId": "m-bad", "media": media}, id="j")
    frame = await client.expect_error("invalid-message", event="webrtc:join-room")
    assert frame["id"] == "j"
    await client.send("webrtc:media-state", {"callRoomId": "m-bad", "audio": True, "video": True}, id="m")
    await client.expect_error("not-in-room", event="webrtc:media-state")


# ---------------------------------------------------------------------------
# webrtc:media-state
# ---------------------------------------------------------------------------


async def test_media_state_is_acked_and_told_to_the_others_only_as_the_whole_participant(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    a, b, c = await in_room("m-state", alice, bob, carol)
    before = (await b.join("m-state"))["participant"]  # a rejoin: announces nothing

    await media_state(b, "m-state", audio=False, video=True)

    for other in (a, c):
        participant = await updated(other, "m-state", b)
        assert participant == {**before, "media": {"audio": False, "video": True, "screen": False}}
    await b.round_trip()  # the sender is not told
    await a.round_trip()
    await c.round_trip()  # once each


async def test_media_state_without_an_id_is_told_to_the_others_and_not_acked(
    in_room: InRoom, alice: User, bob: User
) -> None:
    a, b = await in_room("m-state-noid", alice, bob)

    await media_state(b, "m-state-noid", id=None, audio=True, video=False, screen=True)

    participant = await updated(a, "m-state-noid", b)
    assert participant["media"] == {"audio": True, "video": False, "screen": True}
    await b.round_trip()  # neither an ack nor an update


async def test_media_state_screen_defaults_to_false(in_room: InRoom, alice: User, bob: User) -> None:
    a, b = await in_room("m-screen", alice, bob)
    await media_state(b, "m-screen", id="on", audio=True, video=True, screen=True)
    assert (await updated(a, "m-screen", b))["media"]["screen"] is True

    await media_state(b, "m-screen", id="off", audio=True, video=True)

    assert (await updated(a, "m-screen", b))["media"] == ALL_ON


async def test_later_joiners_and_departures_show_the_latest_media(
    in_room: InRoom, connect: ConnectFactory, alice: User, bob: User, carol: User
) -> None:
    a, b = await in_room("m-later", alice, bob)
    await media_state(b, "m-later", id="1", audio=False, video=False)
    await updated(a, "m-later", b)
    await media_state(b, "m-later", id="2", audio=False, video=True, screen=True)
    await updated(a, "m-later", b)

    joined = await (await connect(carol)).join("m-later")

    assert [(p["socketId"], p["media"]) for p in joined["existingParticipants"]] == [
        (a.socket_id, ALL_ON),
        (b.socket_id, {"audio": False, "video": True, "screen": True}),
    ]
    assert (await a.expect("webrtc:participant-joined"))["data"]["participant"]["userId"] == str(carol.pk)
    await b.expect("webrtc:participant-joined")
    assert (await b.join("m-later"))["participant"]["media"] == {"audio": False, "video": True, "screen": True}
    await b.leave("m-later")
    left = await a.expect("webrtc:participant-left")
    assert left["data"]["participant"]["media"] == {"audio": False, "video": True, "screen": True}


async def test_media_state_in_a_groups_room_reaches_its_members(
    in_room: InRoom, alice: User, bob: User, team: Group
) -> None:
    a, b = await in_room("m-group", alice, bob, metadata={"groupId": team.pk})

    await media_state(a, "m-group", audio=False, video=False)

    assert (await updated(b, "m-group", a))["media"] == {"audio": False, "video": False, "screen": False}
    await a.round_trip()


async def test_another_connection_of_the_same_user_is_told_like_anyone_else(
    in_room: InRoom, alice: User, bob: User
) -> None:
    first, second, b = await in_room("m-same-user", alice, alice, bob)

    await media_state(first, "m-same-user", audio=False, video=True)

    await updated(second, "m-same-user", first)
    await updated(b, "m-same-user", first)
    await first.round_trip()


async def test_media_state_outside_any_room_is_not_in_room(connect: ConnectFactory, alice: User) -> None:
    client = await connect(alice)

    await client.send("webrtc:media-state", {"callRoomId": "m-nowhere", "audio": True, "video": True}, id="x")

    frame = await client.expect_error("not-in-room", event="webrtc:media-state")
    assert frame["id"] == "x"
    await client.round_trip()


async def test_media_state_for_another_room_is_not_in_room_and_reaches_nobody(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    """Tests that media-state names the sender's own room: one naming a room it is not in
    is refused, and neither room hears of it (nor does its own media change)."""
    a, b = await in_room("m-mine", alice, bob)
    (c,) = await in_room("m-theirs", carol)

    await a.send("webrtc:media-state", {"callRoomId": "m-theirs", "audio": False, "video": False}, id="x")

    await a.expect_error("not-in-room", event="webrtc:media-state")
    await all_silent(b, c)
    assert (await a.join("m-mine"))["participant"]["media"] == ALL_ON


async def test_media_state_after_leaving_is_not_in_room(in_room: InRoom, alice: User, bob: User) -> None:
    a, b = await in_room("m-left", alice, bob)
    await a.leave("m-left")
    await b.expect("webrtc:participant-left")

    await a.send("webrtc:media-state", {"callRoomId": "m-left", "audio": False, "video": False}, id="x")

    await a.expect_error("not-in-room", event="webrtc:media-state")
    await b.round_trip()


@pytest.mark.parametrize(
    "data",
    [
        {"callRoomId": "m-bad-state", "audio": False},
        {"callRoomId": "m-bad-state", "video": False},
        {"callRoomId": "m-bad-state", "audio": "off", "video": False},
        {"callRoomId": "m-bad-state", "audio": False, "video": False, "screen": "no"},
        {"audio": False, "video": False},
    ],
)
async def test_a_malformed_media_state_is_invalid_and_changes_nothing(
    in_room: InRoom, alice: User, bob: User, data: dict[str, Any]
) -> None:
    a, b = await in_room("m-bad-state", alice, bob)

    await a.send("webrtc:media-state", data, id="bad")

    frame = await a.expect_error("invalid-message", event="webrtc:media-state")
    assert frame["id"] == "bad"
    await b.round_trip()
    assert (await a.join("m-bad-state"))["participant"]["media"] == ALL_ON


async def test_media_changes_are_counted_in_the_participants_history_row(
    in_room: InRoom, alice: User, bob: User
) -> None:
    a, b = await in_room("m-history", alice, bob)
    for n in range(3):
        await media_state(b, "m-history", id=f"m{n}", audio=n % 2 == 0, video=True)
        await updated(a, "m-history", b)
    await b.send("webrtc:media-state", {"callRoomId": "other", "audio": True, "video": True}, id="refused")
    await b.expect_error("not-in-room")

    await history_written()

    rows = {
        row.socket_id: row.media_changes
        async for row in CallParticipant.objects.filter(call__room_id="m-history", left_at__isnull=True)
    }
    assert rows == {a.socket_id: 0, b.socket_id: 3}
