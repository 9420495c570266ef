"""Tests that the Socket.IO compatibility endpoint (docs/protocol.md §1) serves an
unchanged socket.io-client on real daphne processes: with its defaults (long-polling,
then the upgrade), websocket only and long-polling only; in one room with native
clients; across processes sharing Redis. And that what no real client sends (silence,
malformed packets, bad credentials) gets a clean answer, never a traceback.

The Socket.IO peers are tests/js/socketio/*.mjs on node, with socket.io-client as
tests/js/package-lock.json pins it (``npm ci --prefix tests/js``; ``make test`` runs it).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from calls.delivery import MAILBOX_CAPACITY
from calls.socketio.engine import OUTBOX_LIMIT
from tests.redis_server import RedisServer
from tests.servers import PROJECT_DIR, Server, demo_server, prepare_database, server_env, start_daphnes
from tests.socketio_raw import RECEIVE_TIMEOUT_SECS, RawPolling, RawWebsocket, event_packet, http
from tests.wsclient import WsClient

JS_DIR = PROJECT_DIR / "tests" / "js"
NODE_TIMEOUT_SECS = 120.0
PING_INTERVAL_SECS = 2  # short, so that a silent client is closed within seconds
PING_TIMEOUT_SECS = 3
RESUME_GRACE_SECS = 2
MAX_CONNECTIONS_PER_USER = 4
AUTH_FAILURES_PER_MINUTE = 3
SERVER_SETTINGS = {
    "CALLS_SOCKETIO_PING_INTERVAL_SECS": str(PING_INTERVAL_SECS),
    "CALLS_SOCKETIO_PING_TIMEOUT_SECS": str(PING_TIMEOUT_SECS),
    "CALLS_MAX_CONNECTIONS_PER_USER": str(MAX_CONNECTIONS_PER_USER),
    "CALLS_AUTH_FAILURES_PER_MINUTE": str(AUTH_FAILURES_PER_MINUTE),
    "CALLS_JOINS_PER_MINUTE": "1000",
    "CALLS_RESUME_GRACE_SECS": str(RESUME_GRACE_SECS),
    # The throttle test names its own client address in X-Forwarded-For, so that its
    # failures do not lock the other tests' 127.0.0.1 out.
    "CALLS_TRUSTED_PROXIES": "127.0.0.1",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("socketio"), **SERVER_SETTINGS) as server:
        yield server


@pytest.fixture(scope="module")
def tokens(server: Server) -> dict[str, str]:
    return {user: server.token(user) for user in ("alice", "bob", "carol", "dave")}


def run_node(script: str, *args: str) -> dict[str, Any]:
    """Run a script of tests/js/socketio/ and return the JSON it printed."""
    node = shutil.which("node")
    assert node is not None, "node is not installed (README: make test needs Node.js 20 or later)"
    assert (JS_DIR / "node_modules" / "socket.io-client").is_dir(), "run `npm ci --prefix tests/js` (make test does)"
    result = subprocess.run(
        [node, str(JS_DIR / "socketio" / script), *args],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECS,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


def assert_no_traceback(*servers: Server) -> None:
    for server in servers:
        assert "Traceback" not in server.log(), server.log()[-4000:]


@pytest.mark.parametrize("transports", ["default", "websocket", "polling"])
def test_the_seed_usage_example_works_with_an_unchanged_socket_io_client(
    server: Server, tokens: dict[str, str], transports: str
) -> None:
    seen = run_node("call.mjs", server.http, transports, tokens["alice"], tokens["bob"], tokens["carol"])
    alice, bob, carol = seen["socketIds"]
    # socket.id is the socketId of webrtc:connected, not the Engine.IO sid.
    assert [c["socketId"] for c in seen["connected"]] == seen["socketIds"]
    assert [c["userId"] for c in seen["connected"]] == ["1", "2", "3"]
    assert not set(seen["engineIds"]) & set(seen["socketIds"])
    expected_transport = "polling" if transports == "polling" else "websocket"
    assert seen["transports"] == [expected_transport] * 3  # "default": the upgrade happened

    joins = seen["joins"]
    assert joins["aliceJoined"]["event"] == "webrtc:room-joined"  # the ack's argument: {event, data}
    assert joins["aliceJoined"]["data"]["participantCount"] == 1
    assert joins["aliceJoined"]["data"]["metadata"]["topic"] == "socket.io"
    assert joins["bobJoined"]["participantCount"] == 2  # without an ack: the reply is an event
    assert [p["socketId"] for p in joins["bobJoined"]["existingParticipants"]] == [alice]
    assert joins["bobAnnounced"]["participant"]["socketId"] == bob
    carol_joined = joins["carolJoined"]["data"]
    assert [p["socketId"] for p in carol_joined["existingParticipants"]] == [alice, bob]
    assert [a["participant"]["socketId"] for a in joins["carolAnnounced"]] == [carol, carol]

    signalling = seen["signalling"]
    for name, socket_id in (("alice", alice), ("bob", bob)):
        offer = signalling["offers"][name]
        assert (offer["fromSocketId"], offer["fromUserId"]) == (carol, "3")
        assert offer["offer"] == {"type": "offer", "sdp": f"v=0 {socket_id}"}
    bob_answer, alice_answer = signalling["answers"]
    assert (bob_answer["fromSocketId"], bob_answer["answer"]["sdp"]) == (bob, f"answer of bob to v=0 {bob}")
    assert (alice_answer["fromSocketId"], alice_answer["answer"]["sdp"]) == (alice, "answer of alice")
    assert signalling["answerAck"] == {"event": "webrtc:ack", "data": {"event": "webrtc:answer"}}

    ice = seen["ice"]
    assert ice["targeted"]["fromSocketId"] == alice and ice["targeted"]["candidate"]["sdpMid"] == "0"
    assert [(c["fromSocketId"], c["candidate"]) for c in ice["broadcast"]] == [(bob, ""), (bob, "")]

    errors = seen["errors"]
    assert errors["errorEvent"]["error"] == "participant-not-found"
    assert errors["errorEvent"]["event"] == "webrtc:offer"
    assert errors["errorAck"]["event"] == "webrtc:signaling-error"
    assert errors["errorAck"]["data"]["error"] == "participant-not-found"
    assert errors["unknownEvent"]["data"]["error"] == "unknown-event"
    assert errors["invalid"]["data"]["error"] == "invalid-message"

    leaving = seen["leaving"]
    assert leaving["left"] == {"event": "webrtc:room-left", "data": {"callRoomId": carol_joined["callRoomId"]}}
    assert [(p["participant"]["socketId"], p["reason"]) for p in leaving["bobLeft"]] == [(bob, "left")] * 2
    assert (leaving["carolGone"]["participant"]["socketId"], leaving["carolGone"]["reason"]) == (carol, "disconnected")
    assert_no_traceback(server)


def mesh_spec(room: str, peers: list[tuple[str, str, Server, str]]) -> str:
    """mesh.mjs's argument: (name, kind, server, token) per peer."""
    return json.dumps(
        {
            "room": room,
            "peers": [
                {"name": name, "kind": kind, "url": server.ws if kind == "native" else server.http, "token": token}
                for name, kind, server, token in peers
            ],
        }
    )


def assert_full_mesh(seen: dict[str, Any], transports: list[str]) -> None:
    """Every pair exchanged offer, answer and candidates, from the real sender."""
    peers = {peer["name"]: peer["socketId"] for peer in seen["peers"]}
    assert [peer["transport"] for peer in seen["peers"]] == transports
    names = list(peers)
    assert [(e["from"], e["to"]) for e in seen["exchanges"]] == [
        (names[i], names[j]) for i in range(len(names)) for j in range(i)
    ]
    for exchange in seen["exchanges"]:
        sender, receiver = peers[exchange["from"]], peers[exchange["to"]]
        assert exchange["offer"]["fromSocketId"] == sender
        assert exchange["offer"]["offer"]["sdp"] == f"offer {exchange['from']}>{exchange['to']}"
        assert exchange["answer"]["fromSocketId"] == receiver
        assert exchange["answer"]["answer"]["sdp"] == f"answer {exchange['to']}>{exchange['from']}"
        assert [c["fromSocketId"] for c in exchange["candidates"]] == [sender, receiver]
    assert len(seen["broadcasts"]) == len(names) * (len(names) - 1)
    for broadcast in seen["broadcasts"]:
        assert broadcast["candidate"]["fromSocketId"] == peers[broadcast["from"]]
        assert broadcast["candidate"]["candidate"] == f"to all from {broadcast['from']}"
    assert seen["left"]["event"] == "webrtc:room-left"
    assert {(p["participant"]["socketId"], p["reason"]) for p in seen["seenLeaving"]} == {(peers[names[0]], "left")}


def test_native_and_socket_io_clients_signal_each_other_in_one_room(server: Server, tokens: dict[str, str]) -> None:
    spec = mesh_spec(
        "mixed-room",
        [
            ("alice", "native", server, tokens["alice"]),
            ("bob", "websocket", server, tokens["bob"]),
            ("carol", "default", server, tokens["carol"]),
            ("alice-phone", "polling", server, tokens["alice"]),
        ],
    )
    assert_full_mesh(run_node("mesh.mjs", spec), ["native", "websocket", "websocket", "polling"])
    assert_no_traceback(server)


@pytest.fixture
def two_processes(tmp_path: Path) -> Iterator[list[Server]]:
    """Redis and two daphne processes sharing it (and a SQLite file); all stopped after."""
    redis = RedisServer(tmp_path / "redis").start()
    servers: list[Server] = []
    try:
        env = server_env(tmp_path / "db.sqlite3", REDIS_URL=redis.url, **SERVER_SETTINGS)
        prepare_database(env)
        servers = start_daphnes(env, [tmp_path / f"daphne{i}.log" for i in range(2)])
        yield servers
    finally:
        for process in servers:
            process.stop(signal.SIGKILL)
        redis.stop()


def test_socket_io_clients_on_two_processes_relay_through_redis(two_processes: list[Server]) -> None:
    first, second = two_processes
    tokens = {user: first.token(user) for user in ("alice", "bob", "carol")}
    spec = mesh_spec(
        "two-processes",
        [
            ("alice", "default", first, tokens["alice"]),
            ("bob", "websocket", second, tokens["bob"]),
            ("carol", "native", second, tokens["carol"]),
        ],
    )
    assert_full_mesh(run_node("mesh.mjs", spec), ["websocket", "websocket", "native"])
    assert_no_traceback(*two_processes)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_a_client_that_stops_answering_pings_is_closed_and_leaves_its_room(
    server: Server, tokens: dict[str, str], ws_clients: list[WsClient], transport: str
) -> None:
    watcher = await WsClient.open(server.ws, tokens["bob"])
    ws_clients.append(watcher)
    await watcher.join(f"silent-{transport}")
    if transport == "websocket":
        silent: RawWebsocket | RawPolling = await RawWebsocket.open(server.port, silent=True)
    else:
        silent = await RawPolling(server.port, silent=True).open()
    assert silent.handshake["pingInterval"] == PING_INTERVAL_SECS * 1000
    assert silent.handshake["pingTimeout"] == PING_TIMEOUT_SECS * 1000
    await silent.connect({"token": tokens["alice"]})
    join = event_packet("webrtc:join-room", {"callRoomId": f"silent-{transport}"})
    if isinstance(silent, RawWebsocket):
        await silent.send(join)
    else:
        await silent.post(join)
    assert (await silent.event("webrtc:room-joined"))["participantCount"] == 2
    assert (await watcher.expect("webrtc:participant-joined"))["data"]["participant"]["socketId"] == silent.socket_id
    # From now on the client reads nothing (polling: no GET) and answers no ping: it is
    # parked for a resume, and leaves when the grace is over.
    deadline = PING_INTERVAL_SECS + PING_TIMEOUT_SECS + RESUME_GRACE_SECS + RECEIVE_TIMEOUT_SECS
    left = await watcher.expect("webrtc:participant-left", timeout=deadline)
    assert (left["data"]["participant"]["socketId"], left["data"]["reason"]) == (silent.socket_id, "disconnected")
    if isinstance(silent, RawWebsocket):
        await silent.closed()
    assert f"disconnect reason=ping-timeout lost=True socketId={silent.socket_id}" in server.log()
    assert f"parked room=silent-{transport} socketId={silent.socket_id}" in server.log()
    assert_no_traceback(server)


async def test_a_long_polling_client_that_stops_polling_holds_back_its_sender(
    server: Server, tokens: dict[str, str], ws_clients: list[WsClient]
) -> None:
    """§5 rule 9 on long-polling: what waits for a client that does not poll is bounded
    (its outbox, then its mailbox); past that its sender is refused with
    ``internal-error``, and everything acknowledged reaches the client, in order, once
    it polls again."""
    stalled = await RawPolling(server.port).open()
    await stalled.connect({"token": tokens["alice"]})
    await stalled.post(event_packet("webrtc:join-room", {"callRoomId": "stalled"}))
    await stalled.event("webrtc:room-joined")
    sender = await WsClient.open(server.ws, tokens["bob"])
    ws_clients.append(sender)
    await sender.join("stalled")
    # From now on the client sends no GET (well within its ping interval).
    most = OUTBOX_LIMIT + MAILBOX_CAPACITY
    acked: list[str] = []
    for n in range(most + 10):
        candidate = f"candidate:{n}"
        relay = {"callRoomId": "stalled", "targetSocketId": stalled.socket_id, "candidate": candidate}
        await sender.send("webrtc:ice-candidate", relay, id=n)
        reply = await sender.receive()
        assert reply["id"] == n, reply
        if reply["event"] != "webrtc:ack":
            assert reply["data"]["error"] == "internal-error", reply
            break
        acked.append(candidate)
    assert MAILBOX_CAPACITY <= len(acked) < most, len(acked)

    assert (await stalled.event("webrtc:participant-joined"))["participant"]["socketId"] == sender.socket_id
    assert [(await stalled.event("webrtc:ice-candidate"))["candidate"] for _ in acked] == acked
    await sender.send("webrtc:ice-candidate", {**relay, "candidate": "sentinel"}, id="sentinel")
    assert (await sender.expect("webrtc:ack"))["id"] == "sentinel"
    assert (await stalled.event("webrtc:ice-candidate"))["candidate"] == "sentinel"  # nothing else in between
    assert_no_traceback(server)


async def test_malformed_packets_get_invalid_message_and_never_a_traceback(
    server: Server, tokens: dict[str, str]
) -> None:
    socket = await RawWebsocket.open(server.port)
    try:
        await socket.send("42" + json.dumps(["webrtc:join-room", {"callRoomId": "early"}]))
        await socket.expect_silence()  # no event is handled before the Socket.IO connect
        await socket.send("40{not json")
        assert await socket.receive() == '44{"message":"invalid-message"}'
        await socket.send('40/other,{"token":"x"}')
        assert await socket.receive() == '44/other,{"message":"invalid-namespace"}'
        await socket.connect({"token": tokens["alice"]})

        malformed: list[str | bytes] = [
            "49[]",  # a Socket.IO type digit that does not exist
            "9hello",  # an Engine.IO type digit that does not exist
            "",  # nothing at all
            "4",  # a message without a Socket.IO packet
            "42[not json",
            '42{"event":"webrtc:join-room"}',  # not an array
            "42[]",
            '42[1,{"callRoomId":"r"}]',  # the event name is not a string
            '42["webrtc:join-room"]',  # no data
            '42["webrtc:join-room","r"]',  # data that is not an object
            '42/other,["webrtc:join-room",{"callRoomId":"r"}]',  # another namespace
            '43["answer to nothing"]',  # an acknowledgement of nothing
            "45x",  # a binary packet without its attachment count
            '451-["webrtc:offer",{"_placeholder":true,"num":0}]',  # binary attachments are refused…
            b"\x00\x01attachment",  # …and the attachment that follows is not answered again
            b"\x00\x01",  # a binary frame on its own
            "42" + "9" * 20 + '["webrtc:join-room",{}]',  # an acknowledgement id too long
            "42" + "[" * 100 + "]" * 100,  # nested too deep
            "5",  # an upgrade on a socket that is not probing
            "4" + "2" * 20,
        ]
        for packet in malformed:
            await socket.send(packet)
            if packet == b"\x00\x01attachment":
                continue
            await socket.error("invalid-message")
        await socket.expect_silence()

        # An error of a request that asked for an acknowledgement is its acknowledgement.
        await socket.send('421["webrtc:join-room",{')
        ack = await socket.receive()
        assert ack.startswith("431["), ack
        assert json.loads(ack[3:])[0]["data"]["error"] == "invalid-message"
        await socket.send("42" + json.dumps(["webrtc:offer", {"sdp": "x" * 70_000}]))
        assert (await socket.error("message-too-large"))["details"] == {"maxBytes": 65536}

        # The connection still works.
        await socket.send(event_packet("webrtc:join-room", {"callRoomId": "after-malformed"}, ack_id=7))
        reply = await socket.receive()
        assert reply.startswith("437["), reply
        assert json.loads(reply[3:])[0]["event"] == "webrtc:room-joined"
    finally:
        await socket.close()
    assert_no_traceback(server)


async def test_malformed_polling_requests_get_clean_answers(server: Server, tokens: dict[str, str]) -> None:
    async def get(query: str, method: str = "GET", body: bytes | None = None) -> tuple[int, bytes]:
        answer = await asyncio.to_thread(http, server.port, query, method=method, body=body)
        return answer.status, answer.body

    assert await get("EIO=3&transport=polling") == (400, b'{"code":5,"message":"Unsupported protocol version"}')
    assert await get("EIO=4&transport=flashsocket") == (400, b'{"code":0,"message":"Transport unknown"}')
    assert await get("EIO=4&transport=polling&sid=nope") == (400, b'{"code":1,"message":"Session ID unknown"}')
    assert await get("EIO=4&transport=polling", "POST", b"40") == (400, b'{"code":2,"message":"Bad handshake method"}')

    session = await RawPolling(server.port).open()
    assert (await session.request("PUT", b"x")).status == 400
    await session.connect({"token": tokens["bob"]})
    await session.post("49[]", '42["webrtc:join-room"]', "42/other,[]")
    for _ in range(3):
        assert (await session.event("webrtc:signaling-error"))["error"] == "invalid-message"
    too_large = await session.request("POST", b"4" * 1_000_001)
    assert too_large.status == 413

    session = await RawPolling(server.port).open()
    await session.connect({"token": tokens["bob"]})
    not_utf8 = await session.request("POST", b'42["webrtc:join-room",{"callRoomId":"\xff"}]')
    assert not_utf8.status == 400
    # The session is closed: its next GET gets Engine.IO's close packet, then it is unknown.
    assert (await session.request("GET")).packets[-1] == "1"
    assert (await session.request("GET")).status == 400

    session = await RawPolling(server.port).open()
    waiting = asyncio.ensure_future(session.request("GET"))
    await asyncio.sleep(0.2)  # let the first GET arrive and wait for packets
    second = await session.request("GET")
    assert second.status == 400  # two GETs at once: Engine.IO closes the session
    assert (await waiting).packets[-1] == "1"
    assert_no_traceback(server)


UNAUTHENTICATED_CASES: list[dict[str, Any] | None] = [
    None,
    {},
    {"token": "not-a-jwt"},
    {"token": 42},
    {"ticket": "never-issued"},
]


@pytest.mark.parametrize(
    "auth", UNAUTHENTICATED_CASES, ids=["no-auth", "empty", "bad-token", "token-not-a-string", "bad-ticket"]
)
async def test_a_connect_without_a_valid_credential_gets_connect_error_unauthenticated(
    server: Server, tokens: dict[str, str], auth: dict[str, Any] | None
) -> None:
    # An address of its own for each case, so that their failures are not counted together.
    address = f"198.51.100.{UNAUTHENTICATED_CASES.index(auth) + 1}"
    socket = await RawWebsocket.open(server.port, headers={"X-Forwarded-For": address})
    try:
        await socket.send("40" + (json.dumps(auth) if auth is not None else ""))
        assert await socket.receive() == '44{"message":"unauthenticated"}'
        await socket.send(event_packet("webrtc:join-room", {"callRoomId": "nope"}))
        await socket.expect_silence()  # no event is handled
        await socket.connect({"token": tokens["dave"]})  # the client may try again
    finally:
        await socket.close()
    assert_no_traceback(server)


async def test_credentials_of_the_handshake_and_tickets_authenticate_too(
    server: Server, tokens: dict[str, str]
) -> None:
    """Tests the native order of credentials on the handshake (``?token=``, the
    ``Authorization`` header) when the connect packet has none, and a ticket in it."""
    polling = await RawPolling(server.port, headers={"Authorization": f"Bearer {tokens['carol']}"}).open()
    assert (await polling.connect())["userId"] == "3"
    socket = await RawWebsocket.open(server.port, query=f"&token={tokens['carol']}")
    try:
        assert (await socket.connect())["userId"] == "3"
    finally:
        await socket.close()
    ticket = await asyncio.to_thread(issue_ticket, server, tokens["carol"])
    socket = await RawWebsocket.open(server.port)
    try:
        assert (await socket.connect({"ticket": ticket}))["userId"] == "3"
    finally:
        await socket.close()
    await polling.post("1")


def issue_ticket(server: Server, token: str) -> str:
    request = urllib.request.Request(
        f"{server.http}/api/auth/ws-ticket/", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=RECEIVE_TIMEOUT_SECS) as response:
        return json.loads(response.read())["ticket"]


async def test_an_address_with_too_many_failures_gets_connect_error_rate_limited(
    server: Server, tokens: dict[str, str]
) -> None:
    headers = {"X-Forwarded-For": "203.0.113.9"}
    for attempt in range(AUTH_FAILURES_PER_MINUTE + 1):
        session = await RawPolling(server.port, headers=headers).open()
        throttled = attempt == AUTH_FAILURES_PER_MINUTE  # then even a valid token is refused
        await session.post("40" + json.dumps({"token": tokens["dave"] if throttled else "guess"}))
        expected = "rate-limited" if throttled else "unauthenticated"
        assert await session.receive() == f'44{{"message":"{expected}"}}'
        await session.post("1")


async def test_more_connections_than_the_user_may_hold_get_connect_error(
    server: Server, tokens: dict[str, str]
) -> None:
    sockets = [await RawWebsocket.open(server.port) for _ in range(MAX_CONNECTIONS_PER_USER + 1)]
    try:
        for socket in sockets[:MAX_CONNECTIONS_PER_USER]:
            await socket.connect({"token": tokens["dave"]})
        await sockets[-1].send("40" + json.dumps({"token": tokens["dave"]}))
        assert await sockets[-1].receive() == '44{"message":"too-many-connections"}'
    finally:
        for socket in sockets:
            await socket.close()


async def test_a_foreign_origin_is_refused_on_both_transports(server: Server) -> None:
    foreign = {"Origin": "https://evil.example"}
    answer = await asyncio.to_thread(http, server.port, "EIO=4&transport=polling", headers=foreign)
    assert answer.status == 403
    with pytest.raises(InvalidStatus) as refused:
        await RawWebsocket.open(server.port, headers=foreign)
    assert refused.value.response.status_code == 403
    allowed = {"Origin": f"http://127.0.0.1:{server.port}"}
    answer = await asyncio.to_thread(http, server.port, "EIO=4&transport=polling", headers=allowed)
    assert answer.status == 200
    assert answer.headers["access-control-allow-origin"] == allowed["Origin"]


async def test_a_websocket_upgrade_takes_over_a_polling_session(server: Server, tokens: dict[str, str]) -> None:
    """Tests the upgrade packet by packet: the probe, the noop that releases the waiting
    GET, then everything over the websocket (including what was queued for polling)."""
    polling = await RawPolling(server.port).open()
    await polling.connect({"token": tokens["alice"]})
    waiting = asyncio.ensure_future(polling.request("GET"))
    await asyncio.sleep(0.2)
    probe = await websockets.connect(
        f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket&sid={polling.sid}",
        open_timeout=RECEIVE_TIMEOUT_SECS,
    )
    try:
        await probe.send("2probe")
        assert await asyncio.wait_for(probe.recv(), RECEIVE_TIMEOUT_SECS) == "3probe"
        assert (await waiting).packets == ["6"]
        await polling.post(event_packet("webrtc:join-room", {"callRoomId": "upgraded"}))  # queued for polling
        await probe.send("5")
        while (packet := await asyncio.wait_for(probe.recv(), RECEIVE_TIMEOUT_SECS)) == "2":
            await probe.send("3")
        assert packet.startswith('42["webrtc:room-joined"'), packet
        assert (await polling.request("GET")).status == 400  # the session is the websocket's now
    finally:
        await probe.close()
