"""Tests that the liveness beat tells rooms of lost participants and closes the
connections of a process its peers declared dead."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import threading

import pytest

from accounts.models import User
from calls import history, lifecycle, liveness
from calls.models import CallParticipant
from calls.presence import get_presence
from calls.presence.base import Departure, Presence, PresenceEvicted, PresenceUnavailable
from tests.calls.conftest import InRoom
from tests.conftest import history_written

pytestmark = pytest.mark.django_db(transaction=True)


class ScriptedPresence:
    """Wraps the real store; ``heartbeat`` and ``reap`` do what the test says."""

    def __init__(self, store: Presence) -> None:
        self.store = store
        self.evict_channels: list[str] | None = None
        self.departures: list[Departure] = []
        self.unavailable = False

    def __getattr__(self, name: str) -> object:
        return getattr(self.store, name)

    async def heartbeat(self) -> None:
        if self.unavailable:
            raise PresenceUnavailable("Redis is down")
        if self.evict_channels is not None:
            raise PresenceEvicted(self.evict_channels)

    async def reap(self) -> list[Departure]:
        departures, self.departures = self.departures, []
        return departures


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> ScriptedPresence:
    presence = ScriptedPresence(get_presence())
    monkeypatch.setattr(liveness, "get_presence", lambda: presence)
    return presence


async def test_a_reaped_participant_is_announced_as_lost_and_recorded(
    in_room: InRoom, scripted: ScriptedPresence, alice: User, bob: User
) -> None:
    first, doomed = await in_room("r", alice, bob)
    # As a peer's reap would: the store drops the member, the beat reports it.
    departure = await scripted.store.leave(room_key="r", socket_id=doomed.socket_id)
    scripted.departures = [departure]

    await liveness.liveness_tick()

    left = await first.expect("webrtc:participant-left")
    assert left["data"]["reason"] == "lost"
    assert left["data"]["participant"]["socketId"] == doomed.socket_id
    await history_written()
    row = await CallParticipant.objects.aget(socket_id=doomed.socket_id)
    assert row.leave_reason == "lost"
    assert row.left_at is not None


async def test_the_beat_never_waits_for_a_history_backlog(
    in_room: InRoom, scripted: ScriptedPresence, alice: User, bob: User
) -> None:
    """Tests that a stuck history writer delays neither the beat nor the ``lost``."""
    first, doomed = await in_room("r", alice, bob)
    await history_written()
    released = threading.Event()
    history.writer().submit(lambda: released.wait(10))  # the database is stuck
    scripted.departures = [await scripted.store.leave(room_key="r", socket_id=doomed.socket_id)]
    try:
        await asyncio.wait_for(liveness.liveness_tick(), timeout=1.0)
        left = await first.expect("webrtc:participant-left")
    finally:
        released.set()
    assert left["data"]["reason"] == "lost"


async def test_an_evicted_process_closes_its_connections_with_1001(
    in_room: InRoom, scripted: ScriptedPresence, alice: User
) -> None:
    (client,) = await in_room("r", alice)
    scripted.evict_channels = [member.channel_name for member in await scripted.store.members(room_key="r")]

    await liveness.liveness_tick()

    assert await client.communicator.receive_output(timeout=2) == {"type": "websocket.close", "code": 1001}


async def test_a_beat_survives_an_unreachable_store(
    in_room: InRoom, scripted: ScriptedPresence, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    (client,) = await in_room("r", alice)
    scripted.unavailable = True

    await liveness.liveness_tick()

    assert "presence unavailable" in caplog.text
    await client.expect_silence()


def test_a_dead_process_is_gone_within_the_ttl(settings: object) -> None:
    for ttl in (3, 30, 300):
        settings.CALLS_PRESENCE_TTL_SECS = ttl  # type: ignore[attr-defined]
        assert liveness.lease_secs() + liveness.heartbeat_interval_secs() < ttl
        # A live process may miss two beats in a row without losing its lease.
        assert liveness.lease_secs() > 2 * liveness.heartbeat_interval_secs()


def test_start_up_raises_a_low_open_file_limit_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        limit = lifecycle.raise_open_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == limit
        assert limit == min(hard, lifecycle.OPEN_FILES_WANTED) or hard == resource.RLIM_INFINITY
        assert limit > 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_start_up_warns_when_the_hard_open_file_limit_is_low() -> None:
    """In a child process: a process cannot raise its hard limit back up."""
    script = (
        "import django; django.setup(); from calls.lifecycle import raise_open_file_limit; "
        "print(raise_open_file_limit())"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "256"
    assert "open-file limit is 256" in result.stderr
