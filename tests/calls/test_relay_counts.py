"""Tests that relay counts reach the history while a call goes on (a killed process
loses at most one flush interval of them) and are never counted twice, and that the
admin filters sessions by participant, leave reason and ring outcome."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.test import Client as HttpClient

from accounts.models import User
from calls import services
from calls.models import CallRoom
from tests.calls.conftest import InRoom
from tests.conftest import history_written

pytestmark = pytest.mark.django_db(transaction=True)


async def counts(room_id: str) -> tuple[int, int, int]:
    row = await CallRoom.objects.aget(room_id=room_id)
    return row.offers_relayed, row.answers_relayed, row.candidates_relayed


async def test_relay_counts_are_flushed_while_the_call_goes_on_and_not_twice(
    in_room: InRoom, alice: User, bob: User
) -> None:
    a, b = await in_room("counted", alice, bob)
    for n in range(3):
        await a.send("webrtc:ice-candidate", {"callRoomId": "counted", "candidate": f"candidate:{n}"}, id=f"c{n}")
        await a.expect("webrtc:ack")
    await a.send("webrtc:offer", {"callRoomId": "counted", "targetSocketId": b.socket_id,
                                  "offer": {"type": "offer", "sdp": "v=0"}}, id="o")  # fmt: skip
    await a.expect("webrtc:ack")
    await history_written()
    assert await counts("counted") == (0, 0, 0)  # counted in memory until a flush or a leave

    assert services.flush_relay_counts() == 1
    await history_written()
    assert await counts("counted") == (1, 0, 3)
    assert services.flush_relay_counts() == 0  # nothing new

    await a.send("webrtc:ice-candidate", {"callRoomId": "counted", "candidate": "candidate:9"}, id="c9")
    await a.expect("webrtc:ack")
    await a.leave("counted")
    await history_written()
    assert await counts("counted") == (1, 0, 4)


async def test_the_admin_filters_sessions_by_participant_leave_reason_and_ring_outcome(
    in_room: InRoom, alice: User, bob: User, carol: User
) -> None:
    _, b = await in_room("with-bob", alice, bob)
    await b.leave("with-bob")
    (c,) = await in_room("with-carol", carol)
    await c.leave("with-carol")
    await history_written()
    staff = await database_sync_to_async(User.objects.create_superuser)("root", "root@example.com", "pw-12345678")
    http = HttpClient()
    await database_sync_to_async(http.force_login)(staff)

    def listed(query: str) -> str:
        response = http.get(f"/admin/calls/callroom/?{query}")
        assert response.status_code == 200, response.status_code
        return response.content.decode()

    by_bob = await database_sync_to_async(listed)(f"participants__user__id__exact={bob.pk}")
    assert "with-bob" in by_bob and "with-carol" not in by_bob
    left = await database_sync_to_async(listed)("participants__leave_reason__exact=left")
    assert "with-bob" in left and "with-carol" in left
    none_missed = await database_sync_to_async(listed)("rings__outcome__exact=missed")
    assert "with-bob" not in none_missed and "with-carol" not in none_missed
