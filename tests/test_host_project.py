"""calls mounted in another chat product (docs/integration.md): ``tests/host_project/``
has its own user model (email login, no ``display_name``, no ``is_staff``), its own group
model (teams with seat levels), its own credentials (API keys) and URL layout, and
reaches calls through the ``CALLS_*`` host settings alone. It is served by a real daphne
from a directory holding only it and ``calls/``, so nothing of this repository's
``accounts``, ``groups`` or ``config`` can be imported."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.servers import PROJECT_DIR, STARTUP_TIMEOUT_SECS, free_port
from tests.wsclient import WsClient

HOST_PROJECT = Path(__file__).resolve().parent / "host_project"
SIGNAL_TIMEOUT_SECS = 10.0
SETUP = """
import json
from people.models import Person
from teams.models import Seat, Team
team = Team.objects.create(title="Night shift")
other = Team.objects.create(title="Day shift")
people = {}
for name, email, full, level, team_of in [
    ("ann", "ann@example.org", "Ann Host", Seat.Level.HOST, team),
    ("ben", "ben@example.org", "", Seat.Level.MEMBER, team),
    ("cy", "cy@example.org", "Cy Outsider", Seat.Level.MEMBER, other),
]:
    person = Person.objects.create_user(email, full_name=full)
    person.api_key = name + "-key-0123456789"
    person.save()
    Seat.objects.create(team=team_of, person=person, level=level)
    people[name] = {"id": str(person.pk), "key": person.api_key}
print(json.dumps({"team": str(team.pk), "people": people}))
"""


@dataclass
class Host:
    port: int
    site: Path
    env: dict[str, str]
    team: str
    people: dict[str, dict[str, str]]

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/calls/"

    async def connect(self, name: str) -> WsClient:
        client, _ = await WsClient.open_with(self.ws, key=self.people[name]["key"])
        return client

    def get(self, path: str, name: str) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", headers={"Authorization": f"Key {self.people[name]['key']}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def posts(self) -> list[str]:
        return json.loads(self.manage("shell", "--no-imports", "-c", POSTS).stdout)

    def manage(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=self.site, env=self.env, capture_output=True, text=True,
            check=True, timeout=120,
        )  # fmt: skip


POSTS = "import json; from teams.models import Post; print(json.dumps([p.text for p in Post.objects.order_by('id')]))"


def site_of(tmp_path: Path) -> Path:
    """The host project and a copy of ``calls/``, and nothing else of this repository."""
    site = tmp_path / "site"
    shutil.copytree(HOST_PROJECT, site, ignore=shutil.ignore_patterns("__pycache__", "db"))
    shutil.copytree(PROJECT_DIR / "calls", site / "calls", ignore=shutil.ignore_patterns("__pycache__"))
    return site


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    site = site_of(tmp_path)
    env = {
        "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin",
        "PYTHONPATH": str(site),
        "DJANGO_SETTINGS_MODULE": "hostsite.settings",
        "HOST_DB": str(tmp_path / "host.sqlite3"),
        "PYTHONUNBUFFERED": "1",
    }
    probe = subprocess.run([sys.executable, "-c", "import groups"], cwd=site, env=env, capture_output=True)
    assert probe.returncode != 0, "this repository's groups app is importable from the host's site"
    first = Host(0, site, env, "", {})
    first.manage("migrate", "--noinput", "-v0")
    made = json.loads(first.manage("shell", "--no-imports", "-c", SETUP).stdout)
    port = free_port()
    log_path = tmp_path / "daphne.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "hostsite.asgi:application"],
            cwd=site, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
        while True:
            assert process.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/up/", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        yield Host(port, site, env, made["team"], made["people"])
    finally:
        process.terminate()
        process.wait(10)
    assert "Traceback" not in log_path.read_text(), log_path.read_text()


async def test_join_relay_ring_and_live_calls_in_a_host_project(host: Host) -> None:
    ann, ben, cy = [await host.connect(name) for name in ("ann", "ben", "cy")]
    assert ann.user_id == host.people["ann"]["id"]

    joined = await ann.join("standup", metadata={"groupId": host.team})
    assert joined["existingParticipants"] == []
    assert joined["participant"]["displayName"] == "Ann Host"
    await ann.send("webrtc:ring", {"callRoomId": "standup"}, id="r")
    started = (await ann.expect("webrtc:ring-started"))["data"]
    assert started["userIds"] == [host.people["ben"]["id"]]  # the team's other seat; cy is not in the team
    incoming = (await ben.expect("webrtc:incoming-call"))["data"]
    assert incoming["from"]["displayName"] == "Ann Host"  # CALLS_DISPLAY_NAME

    ben_joined = await ben.join("standup", metadata={"groupId": host.team})
    assert [p["displayName"] for p in ben_joined["existingParticipants"]] == ["Ann Host"]
    assert ben_joined["participant"]["username"] == "ben@example.org"  # the login field
    frames = {(await ann.receive())["event"] for _ in range(2)}
    assert frames == {"webrtc:participant-joined", "webrtc:ring-updated"}  # ben accepted
    assert {(await ben.receive())["event"] for _ in range(2)} == {"webrtc:ring-ended", "webrtc:ring-updated"}

    offer = {"targetSocketId": ann.socket_id, "callRoomId": "standup", "offer": {"type": "offer", "sdp": "v=0"}}
    await ben.send("webrtc:offer", offer)
    relayed = (await ann.expect("webrtc:offer"))["data"]
    assert (relayed["fromSocketId"], relayed["fromUserId"]) == (ben.socket_id, host.people["ben"]["id"])

    # Not a seat of the team: refused, and the call is not among its live calls.
    await cy.send("webrtc:join-room", {"callRoomId": "standup", "metadata": {"groupId": host.team}}, id="j")
    refused = await cy.expect("webrtc:signaling-error")
    assert (refused["id"], refused["data"]["error"]) == ("j", "forbidden")
    assert host.get("/video/api/calls/live/", "cy") == []

    [live] = host.get("/video/api/calls/live/", "ben")
    assert (live["callRoomId"], live["groupId"]) == ("standup", host.team)
    assert sorted(p["displayName"] for p in live["participants"]) == ["Ann Host", "ben"]  # email's name part

    # CALLS_TOKEN_USER extends the connection; CALLS_GROUP_ROLES' "host" moderates.
    await ann.send("webrtc:refresh-auth", {"token": host.people["ann"]["key"]}, id="a")
    assert (await ann.expect("webrtc:ack"))["id"] == "a"
    await ann.send("webrtc:end-call", {"callRoomId": "standup"}, id="e")
    ended = {(await ann.receive())["event"] for _ in range(2)}
    assert ended == {"webrtc:ack", "webrtc:call-ended"}
    assert (await ben.expect("webrtc:call-ended"))["data"]["by"]["displayName"] == "Ann Host"

    # The product's receivers of calls' signals wrote into the team's chat.
    deadline = time.monotonic() + SIGNAL_TIMEOUT_SECS
    while (posts := await asyncio.to_thread(host.posts)) != ["Call started: standup", "Call ended: standup"]:
        assert time.monotonic() < deadline, posts
        await asyncio.sleep(0.2)
    for client in (ann, ben, cy):
        await client.close()
