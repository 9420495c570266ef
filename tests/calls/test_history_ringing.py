"""Tests that rings, moderation, media changes and ends of calls are recorded in the call
history (docs/protocol.md §9, §10, §5 rule 11), and shown read-only in the admin."""

from __future__ import annotations

import datetime as dt
import io
import logging
import uuid

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client as HttpClient

from accounts.models import User
from calls import history
from calls.models import CallParticipant, CallRing, CallRoom, ModerationAction
from tests.conftest import history_written, make_user

pytestmark = pytest.mark.django_db

T0 = "2026-12-01T12:00:00.000Z"
T0_PLUS_30S = "2026-12-01T12:00:30.000Z"
T0_PLUS_1M = "2026-12-01T12:01:00.000Z"
T0_PLUS_2M = "2026-12-01T12:02:00.000Z"


def utc(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def make_session(room_id: str, *, creator: User, stays: tuple[tuple[User, str], ...] = ()) -> CallRoom:
    """A live session row as the signaling server writes it; ``stays`` are (user,
    leave_reason) pairs, ``""`` for one still in the call; socket ids ``<room>-s<index>``."""
    started_at = utc(T0) - dt.timedelta(minutes=10)
    call = CallRoom.objects.create(
        session_id=uuid.uuid4().hex,
        room_id=room_id,
        call_type="video",
        created_by=creator,
        metadata={"callType": "video", "createdBy": str(creator.pk)},
        started_at=started_at,
        peak_participants=len(stays),
    )
    for index, (user, reason) in enumerate(stays):
        CallParticipant.objects.create(
            call=call,
            user=user,
            socket_id=f"{room_id}-s{index}",
            joined_at=started_at,
            left_at=started_at + dt.timedelta(minutes=1) if reason else None,
            leave_reason=reason,
        )
    return call


def record_ring(session_id: str, ringer_user_id: str, callee_user_ids: list[str], ring_id: str = "ring-1") -> None:
    """``history.record_ring`` of a ring started at ``T0``, expiring 30 s later."""
    history.record_ring(
        session_id=session_id,
        ring_id=ring_id,
        ringer_user_id=ringer_user_id,
        callee_user_ids=callee_user_ids,
        started_at=T0,
        expires_at=T0_PLUS_30S,
    )


def ring(call: CallRoom, ringer: User, *callees: User, ring_id: str = "ring-1") -> None:
    record_ring(call.session_id, str(ringer.pk), [str(callee.pk) for callee in callees], ring_id=ring_id)


def ban(call: CallRoom, actor: User, target: User, target_socket_id: str, *, at: str) -> None:
    """``history.record_moderation`` of ``actor`` kicking ``target`` with a ban until ``T0_PLUS_2M``."""
    history.record_moderation(
        session_id=call.session_id,
        actor_user_id=str(actor.pk),
        action="ban",
        at=at,
        target_user_id=str(target.pk),
        target_socket_id=target_socket_id,
        banned_until=T0_PLUS_2M,
    )


def outcomes(ring_id: str = "ring-1") -> dict[str, tuple[str, dt.datetime | None]]:
    """callee username → (outcome, ended_at) of the ring's rows."""
    rows = CallRing.objects.filter(ring_id=ring_id).select_related("callee")
    return {row.callee.username if row.callee else "": (row.outcome, row.ended_at) for row in rows}


@pytest.fixture
def call(alice: User, bob: User) -> CallRoom:
    """alice and bob in a call of alice's."""
    return make_session("team-room", creator=alice, stays=((alice, ""), (bob, "")))


def test_the_migrations_match_the_models() -> None:
    out = io.StringIO()

    call_command("makemigrations", "calls", "--check", "--dry-run", stdout=out)


# ---------------------------------------------------------------------------
# record_ring
# ---------------------------------------------------------------------------


def test_a_ring_records_one_ringing_row_per_callee(call: CallRoom, alice: User, carol: User, dave: User) -> None:
    ring(call, alice, carol, dave)

    rows = list(CallRing.objects.order_by("callee__username"))
    assert [row.callee for row in rows] == [carol, dave]
    for row in rows:
        assert row.call == call
        assert row.ring_id == "ring-1"
        assert row.ringer == alice
        assert (row.started_at, row.expires_at) == (utc(T0), utc(T0_PLUS_30S))
        assert row.ended_at is None
        assert row.outcome == ""
        assert row.is_ringing


def test_a_ring_of_a_session_without_a_row_records_nothing(alice: User, carol: User) -> None:
    record_ring("no-such-session", str(alice.pk), [str(carol.pk)])

    assert not CallRing.objects.exists()


def test_a_ring_recorded_twice_keeps_one_row_per_callee(call: CallRoom, alice: User, carol: User) -> None:
    ring(call, alice, carol)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome="declined", at=T0_PLUS_1M)

    ring(call, alice, carol, carol)

    assert outcomes() == {"carol": ("declined", utc(T0_PLUS_1M))}


def test_a_ring_leaves_out_callees_deleted_meanwhile_and_a_deleted_ringer(
    call: CallRoom, bob: User, carol: User, dave: User
) -> None:
    carol_pk, bob_pk = carol.pk, bob.pk
    carol.delete()
    bob.delete()

    record_ring(call.session_id, str(bob_pk), [str(carol_pk), str(dave.pk)])

    (row,) = CallRing.objects.all()
    assert (row.callee, row.ringer) == (dave, None)


def test_a_ring_whose_callees_are_all_gone_records_nothing(call: CallRoom, alice: User) -> None:
    record_ring(call.session_id, str(alice.pk), ["987654", "not-a-pk"])

    assert not CallRing.objects.exists()


# ---------------------------------------------------------------------------
# record_ring_outcome
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", [choice.value for choice in CallRing.Outcome])
def test_an_outcome_ends_that_callees_ring_only(call: CallRoom, alice: User, carol: User, outcome: str) -> None:
    dave = make_user("dave")
    ring(call, alice, carol, dave)

    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome=outcome, at=T0_PLUS_1M)

    assert outcomes() == {"carol": (outcome, utc(T0_PLUS_1M)), "dave": ("", None)}


def test_an_outcome_is_written_once(call: CallRoom, alice: User, carol: User) -> None:
    ring(call, alice, carol)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome="accepted", at=T0_PLUS_1M)

    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome="missed", at=T0_PLUS_2M)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome="call-ended", at=T0_PLUS_2M)

    assert outcomes() == {"carol": ("accepted", utc(T0_PLUS_1M))}


def test_an_outcome_of_an_unknown_ring_or_callee_changes_nothing(
    call: CallRoom, alice: User, bob: User, carol: User
) -> None:
    ring(call, alice, carol)
    ring(call, alice, carol, ring_id="ring-2")

    history.record_ring_outcome(ring_id="no-such-ring", callee_user_id=str(carol.pk), outcome="declined", at=T0)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(bob.pk), outcome="declined", at=T0)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id="987654", outcome="declined", at=T0)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id="", outcome="declined", at=T0)

    assert set(CallRing.objects.values_list("outcome", flat=True)) == {""}


def test_an_unknown_outcome_is_refused(call: CallRoom, alice: User, carol: User) -> None:
    ring(call, alice, carol)

    with pytest.raises(ValueError, match="ringing"):
        history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome="ringing", at=T0)

    assert outcomes() == {"carol": ("", None)}


# ---------------------------------------------------------------------------
# record_moderation
# ---------------------------------------------------------------------------


def test_a_kick_with_a_ban_is_recorded(call: CallRoom, alice: User, bob: User) -> None:
    ban(call, alice, bob, "team-room-s1", at=T0)

    (row,) = ModerationAction.objects.all()
    assert (row.call, row.actor, row.action, row.at) == (call, alice, "ban", utc(T0))
    assert (row.target_user, row.target_socket_id, row.banned_until) == (bob, "team-room-s1", utc(T0_PLUS_2M))


@pytest.mark.parametrize("action", ["end-call", "lock", "unlock"])
def test_an_action_without_a_target_is_recorded(call: CallRoom, alice: User, action: str) -> None:
    history.record_moderation(session_id=call.session_id, actor_user_id=str(alice.pk), action=action, at=T0)

    (row,) = ModerationAction.objects.all()
    assert (row.actor, row.action, row.at) == (alice, action, utc(T0))
    assert (row.target_user, row.target_socket_id, row.banned_until) == (None, "", None)


def test_each_action_gets_its_row_in_order(call: CallRoom, alice: User, bob: User) -> None:
    for action, at in (("lock", T0), ("kick", T0_PLUS_1M), ("unlock", T0_PLUS_2M)):
        history.record_moderation(
            session_id=call.session_id,
            actor_user_id=str(alice.pk),
            action=action,
            at=at,
            target_user_id=str(bob.pk) if action == "kick" else None,
        )

    assert list(call.moderation_actions.values_list("action", "target_user")) == [
        ("lock", None),
        ("kick", bob.pk),
        ("unlock", None),
    ]


def test_an_action_in_a_session_without_a_row_records_nothing(alice: User) -> None:
    history.record_moderation(session_id="no-such-session", actor_user_id=str(alice.pk), action="lock", at=T0)

    assert not ModerationAction.objects.exists()


def test_an_action_keeps_its_row_when_its_users_are_gone(call: CallRoom, alice: User) -> None:
    history.record_moderation(
        session_id=call.session_id, actor_user_id="987654", action="kick", at=T0, target_user_id="987655"
    )

    (row,) = ModerationAction.objects.all()
    assert (row.actor, row.target_user, row.action) == (None, None, "kick")


def test_an_unknown_action_is_refused(call: CallRoom, alice: User) -> None:
    with pytest.raises(ValueError, match="mute"):
        history.record_moderation(session_id=call.session_id, actor_user_id=str(alice.pk), action="mute", at=T0)

    assert not ModerationAction.objects.exists()


# ---------------------------------------------------------------------------
# record_media_change
# ---------------------------------------------------------------------------


def test_media_changes_are_counted_per_participant(call: CallRoom) -> None:
    for _ in range(3):
        history.record_media_change(session_id=call.session_id, socket_id="team-room-s1")

    counts = dict(call.participants.values_list("socket_id", "media_changes"))
    assert counts == {"team-room-s0": 0, "team-room-s1": 3}


def test_a_media_change_of_an_unknown_session_or_socket_changes_nothing(call: CallRoom, alice: User) -> None:
    other = make_session("other-room", creator=alice, stays=((alice, ""),))

    history.record_media_change(session_id="no-such-session", socket_id="team-room-s0")
    history.record_media_change(session_id=call.session_id, socket_id="no-such-socket")
    history.record_media_change(session_id=other.session_id, socket_id="team-room-s0")

    assert set(CallParticipant.objects.values_list("media_changes", flat=True)) == {0}


# ---------------------------------------------------------------------------
# record_call_ended
# ---------------------------------------------------------------------------


def test_ending_a_call_ends_the_session_and_everyone_still_in_it(
    alice: User, bob: User, carol: User, dave: User
) -> None:
    call = make_session("team-room", creator=alice, stays=((alice, ""), (bob, "left"), (carol, "")))
    bob_left = CallParticipant.objects.get(user=bob).left_at

    history.record_call_ended(session_id=call.session_id, ended_by_user_id=str(alice.pk), at=T0_PLUS_2M)

    call.refresh_from_db()
    assert (call.ended_at, call.ended_by) == (utc(T0_PLUS_2M), alice)
    assert not call.is_live
    stays = {row.user.username: (row.left_at, row.leave_reason) for row in call.participants.select_related("user")}
    assert stays == {
        "alice": (utc(T0_PLUS_2M), "call-ended"),
        "bob": (bob_left, "left"),
        "carol": (utc(T0_PLUS_2M), "call-ended"),
    }


def test_ending_a_call_ends_its_rings_still_ringing(call: CallRoom, alice: User, carol: User, dave: User) -> None:
    ring(call, alice, carol, dave)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome="declined", at=T0_PLUS_1M)

    history.record_call_ended(session_id=call.session_id, ended_by_user_id=str(alice.pk), at=T0_PLUS_2M)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(dave.pk), outcome="call-ended", at=T0_PLUS_2M)

    assert outcomes() == {"carol": ("declined", utc(T0_PLUS_1M)), "dave": ("call-ended", utc(T0_PLUS_2M))}


def test_ending_a_call_leaves_other_sessions_alone(call: CallRoom, alice: User, bob: User) -> None:
    other = make_session("other-room", creator=bob, stays=((bob, ""),))

    history.record_call_ended(session_id=call.session_id, ended_by_user_id=str(alice.pk), at=T0_PLUS_2M)

    other.refresh_from_db()
    assert (other.ended_at, other.ended_by) == (None, None)
    assert other.participants.get().left_at is None


def test_ending_a_session_already_ended_keeps_its_end_and_records_who(call: CallRoom, alice: User) -> None:
    CallRoom.objects.filter(pk=call.pk).update(ended_at=utc(T0_PLUS_1M))

    history.record_call_ended(session_id=call.session_id, ended_by_user_id=str(alice.pk), at=T0_PLUS_2M)

    call.refresh_from_db()
    assert (call.ended_at, call.ended_by) == (utc(T0_PLUS_1M), alice)


def test_ending_a_call_by_a_user_gone_meanwhile_still_ends_it(call: CallRoom) -> None:
    history.record_call_ended(session_id=call.session_id, ended_by_user_id="987654", at=T0_PLUS_2M)

    call.refresh_from_db()
    assert (call.ended_at, call.ended_by) == (utc(T0_PLUS_2M), None)
    assert set(call.participants.values_list("leave_reason", flat=True)) == {"call-ended"}


def test_ending_a_session_without_a_row_changes_nothing(call: CallRoom, alice: User) -> None:
    history.record_call_ended(session_id="no-such-session", ended_by_user_id=str(alice.pk), at=T0_PLUS_2M)

    call.refresh_from_db()
    assert call.ended_at is None
    assert not call.participants.filter(left_at__isnull=False).exists()


def test_a_kicked_participant_leaves_with_its_reason(call: CallRoom) -> None:
    participant = call.participants.get(socket_id="team-room-s1")
    participant.leave_reason = CallParticipant.LeaveReason.KICKED
    participant.left_at = utc(T0)

    participant.full_clean()
    participant.save()

    assert CallParticipant.objects.get(pk=participant.pk).get_leave_reason_display() == "Kicked"


# ---------------------------------------------------------------------------
# Through the process's history writer, as the signaling server calls them
# ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
async def test_the_writer_applies_the_writes_in_order_and_a_failing_one_alone(
    alice: User, bob: User, carol: User, caplog: pytest.LogCaptureFixture
) -> None:
    call = await database_sync_to_async(make_session)("team-room", creator=alice, stays=((alice, ""), (bob, "")))
    sid, by = call.session_id, str(alice.pk)
    writes = [
        (
            history.record_ring,
            {
                "session_id": sid,
                "ring_id": "ring-1",
                "ringer_user_id": by,
                "callee_user_ids": [str(carol.pk)],
                "started_at": T0,
                "expires_at": T0_PLUS_30S,
            },
        ),
        (history.record_media_change, {"session_id": sid, "socket_id": "team-room-s1"}),
        (history.record_moderation, {"session_id": sid, "actor_user_id": by, "action": "x", "at": T0}),
        (history.record_moderation, {"session_id": sid, "actor_user_id": by, "action": "lock", "at": T0}),
        (history.record_call_ended, {"session_id": sid, "ended_by_user_id": by, "at": T0_PLUS_1M}),
        (
            history.record_ring_outcome,
            {"ring_id": "ring-1", "callee_user_id": str(carol.pk), "outcome": "missed", "at": T0_PLUS_2M},
        ),
    ]

    with caplog.at_level(logging.ERROR, logger="calls"):
        for write, kwargs in writes:
            history.writer().submit(write, **kwargs)
        await history_written()

    assert [record.getMessage() for record in caplog.records] == [
        f"could not record call history: lost record_moderation session={call.session_id}"
    ]
    ended = await CallRoom.objects.select_related("ended_by").aget(pk=call.pk)
    assert (ended.ended_at, ended.ended_by) == (utc(T0_PLUS_1M), alice)
    assert [action async for action in ModerationAction.objects.values_list("action", flat=True)] == ["lock"]
    rows = {row.socket_id: row async for row in CallParticipant.objects.filter(call=call)}
    assert rows["team-room-s1"].media_changes == 1
    assert {row.leave_reason for row in rows.values()} == {"call-ended"}
    ring_row = await CallRing.objects.aget()
    assert (ring_row.outcome, ring_row.ended_at) == ("call-ended", utc(T0_PLUS_1M))


# ---------------------------------------------------------------------------
# The admin: rings and moderation, read-only
# ---------------------------------------------------------------------------

VIEWED_MODELS = ("callroom", "callparticipant", "callring", "moderationaction")


@pytest.fixture
def operator_client(client: HttpClient) -> HttpClient:
    """The test client, signed in as a staff user allowed to view call history only."""
    user = make_user("operator")
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    codenames = [f"view_{model}" for model in VIEWED_MODELS]
    user.user_permissions.add(*Permission.objects.filter(codename__in=codenames, content_type__app_label="calls"))
    client.force_login(user)
    return client


@pytest.fixture
def audited(alice: User, bob: User, carol: User, dave: User) -> CallRoom:
    """A call of alice and bob: carol and dave rung (carol declined, dave's ring ended
    with the call), the call locked, bob kicked with a ban, then the call ended by alice;
    and a live call of bob's, ringing carol."""
    call = make_session("audit-room", creator=alice, stays=((alice, ""), (bob, "")))
    ring(call, alice, carol, dave)
    history.record_ring_outcome(ring_id="ring-1", callee_user_id=str(carol.pk), outcome="declined", at=T0_PLUS_30S)
    history.record_media_change(session_id=call.session_id, socket_id="audit-room-s0")
    history.record_moderation(session_id=call.session_id, actor_user_id=str(alice.pk), action="lock", at=T0)
    ban(call, alice, bob, "audit-room-s1", at=T0_PLUS_1M)
    history.record_call_ended(session_id=call.session_id, ended_by_user_id=str(alice.pk), at=T0_PLUS_2M)
    other = make_session("other-room", creator=bob, stays=((bob, ""),))
    ring(other, bob, carol, ring_id="ring-2")
    return call


def test_the_session_page_shows_its_rings_and_moderation(operator_client: HttpClient, audited: CallRoom) -> None:
    response = operator_client.get(f"/admin/calls/callroom/{audited.pk}/change/")

    assert response.status_code == 200
    content = response.content.decode()
    for shown in ("carol", "dave", "Declined", "Call Ended", "ring-1", "Ban", "Lock", "audit-room-s1"):
        assert shown in content, shown
    for column in ("Media changes", "Resumes", "Ringer", "Callee", "Target user", "Banned until"):
        assert column.lower() in content.lower(), column
    assert "ring-2" not in content  # another session's ring
    assert 'name="_save"' not in content


def test_a_ringing_callee_shows_as_ringing(operator_client: HttpClient, audited: CallRoom) -> None:
    other = CallRoom.objects.get(room_id="other-room")

    response = operator_client.get(f"/admin/calls/callroom/{other.pk}/change/")

    assert response.status_code == 200
    content = response.content.decode()
    assert "carol" in content
    assert "ringing" in content


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("", {"ring-1", "ring-2"}, set()),
        ("?outcome=ringing", {"ring-2"}, {"ring-1"}),
        ("?outcome=declined", {"ring-1"}, {"ring-2"}),
        ("?outcome=call-ended", {"ring-1"}, {"ring-2"}),
        ("?outcome=missed", set(), {"ring-1", "ring-2"}),
        ("?q=other-room", {"ring-2"}, {"ring-1"}),
        ("?q=dave", {"ring-1"}, {"ring-2"}),
    ],
    ids=["all", "ringing", "declined", "call-ended", "missed", "search by room", "search by callee"],
)
def test_the_ring_list_filters_by_outcome_and_searches(
    operator_client: HttpClient, audited: CallRoom, query: str, shown: set[str], hidden: set[str]
) -> None:
    response = operator_client.get(f"/admin/calls/callring/{query}")

    assert response.status_code == 200
    rows = list(response.context["cl"].result_list)
    assert {row.ring_id for row in rows} == shown
    assert not {row.ring_id for row in rows} & hidden
    content = response.content.decode()
    for row in rows:
        assert row.callee.username in content
        assert f"/admin/calls/callroom/{row.call_id}/change/" in content


def test_the_ring_list_shows_each_callees_outcome(operator_client: HttpClient, audited: CallRoom) -> None:
    response = operator_client.get("/admin/calls/callring/")

    rows = response.context["cl"].result_list
    assert sorted((row.ring_id, row.callee.username, row.outcome) for row in rows) == [
        ("ring-1", "carol", "declined"),
        ("ring-1", "dave", "call-ended"),
        ("ring-2", "carol", ""),
    ]
    content = response.content.decode()
    for shown in ("Declined", "Call Ended", "ringing", "2026-12-01 12:00:30"):
        assert shown in content, shown


@pytest.mark.parametrize(("query", "actions"), [("", {"lock", "ban"}), ("?action__exact=ban", {"ban"})])
def test_the_moderation_list_filters_by_action(
    operator_client: HttpClient, audited: CallRoom, query: str, actions: set[str]
) -> None:
    response = operator_client.get(f"/admin/calls/moderationaction/{query}")

    assert response.status_code == 200
    assert {row.action for row in response.context["cl"].result_list} == actions
    assert "audit-room" in response.content.decode()


def test_a_ring_and_an_action_have_read_only_pages(operator_client: HttpClient, audited: CallRoom) -> None:
    ring_row = audited.rings.get(callee__username="carol")
    action = audited.moderation_actions.get(action="ban")

    for url in (f"/admin/calls/callring/{ring_row.pk}/change/", f"/admin/calls/moderationaction/{action.pk}/change/"):
        response = operator_client.get(url)
        assert response.status_code == 200, url
        assert "audit-room" in response.content.decode()
        assert 'name="_save"' not in response.content.decode()


def test_the_session_list_filters_live_and_ended_sessions(operator_client: HttpClient, audited: CallRoom) -> None:
    ended = operator_client.get("/admin/calls/callroom/?state=ended&call_type=video")
    live = operator_client.get("/admin/calls/callroom/?state=live")

    assert [call.room_id for call in ended.context["cl"].result_list] == ["audit-room"]
    assert [call.room_id for call in live.context["cl"].result_list] == ["other-room"]


@pytest.mark.parametrize(
    "url",
    [
        "/admin/calls/callring/add/",
        "/admin/calls/moderationaction/add/",
        "/admin/calls/callring/{ring}/delete/",
        "/admin/calls/moderationaction/{action}/delete/",
    ],
)
def test_rings_and_actions_cannot_be_added_or_deleted(operator_client: HttpClient, audited: CallRoom, url: str) -> None:
    ids = {
        "ring": audited.rings.get(callee__username="carol").pk,
        "action": audited.moderation_actions.get(action="ban").pk,
    }

    assert operator_client.get(url.format(**ids)).status_code == 403


def test_a_ring_cannot_be_changed(operator_client: HttpClient, audited: CallRoom) -> None:
    ring_row = audited.rings.get(callee__username="dave")

    response = operator_client.post(f"/admin/calls/callring/{ring_row.pk}/change/", {"outcome": "accepted"})

    assert response.status_code == 403
    ring_row.refresh_from_db()
    assert ring_row.outcome == "call-ended"
