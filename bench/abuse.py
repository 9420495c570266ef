"""Measure the six abuse figures against one source tree (same script, same parameters).

usage: python -m bench.abuse TREE OUT.json [scenario ...]
(TREE: a checkout of this project, e.g. a git worktree of an older commit)

Every scenario starts its own redis-server and daphne processes (cwd=TREE, this
interpreter) on a fresh SQLite database with the demo users, on loopback, and kills
them after.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import resource
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import websockets

PASSWORD = "demo-pass-123"  # noqa: S105 - the demo users'
SECRET = "measure-secret-key-of-sufficient-length-0123456789"  # noqa: S105 - for its own servers

# Parameters (identical for both trees)
CONNECT_WINDOW_SECS = 6.0
CONNECT_MAX = 3000
CONNECT_CONCURRENCY = 64
FLOOD_SOCKETS = 8
FLOOD_SECS = 10.0
AFTER_SECS = 20.0
PROBE_EVERY_SECS = 0.5
PROBE_TIMEOUT_SECS = 30.0
FLOOD_REPLY_TIMEOUT_SECS = 0.25
CASCADE_TTL_SECS = 3
CASCADE_LOCK_SECS = 15.0  # the SQLite write lock is held this long after the kill
CASCADE_WATCH_SECS = 60.0
CRED_WATCH_SECS = 15.0
JWT_TTL_SECS = 3
LOGIN_ATTEMPTS = 100


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self, tree: Path, processes: int, redis: bool = True, **env: str) -> None:
        self.tree = tree
        self.dir = Path(tempfile.mkdtemp(prefix="measure-"))
        self.db = self.dir / "db.sqlite3"
        self.redis_port = free_port() if redis else None
        self.redis: subprocess.Popen | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLS_", "REDIS_", "DJANGO_"))}
        self.env.update(
            DJANGO_SETTINGS_MODULE="config.settings",
            SECRET_KEY=SECRET,
            DEBUG="0",
            ALLOWED_HOSTS="127.0.0.1,localhost",
            DATABASE_URL=f"sqlite:///{self.db}",
            PYTHONUNBUFFERED="1",
            **env,
        )
        if redis:
            self.env["REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/0"
        self.processes = processes
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Cluster:
        try:
            if self.redis_port:
                self.redis = subprocess.Popen(
                    [  # noqa: S607 - redis-server from PATH, as the tests start it
                        "redis-server",
                        "--port",
                        str(self.redis_port),
                        "--bind",
                        "127.0.0.1",
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                        "--dir",
                        str(self.dir),
                    ],
                    stdout=(self.dir / "redis.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            for command in (["migrate", "--noinput", "-v0"], ["seed_demo"]):
                subprocess.run(
                    [sys.executable, "manage.py", *command],
                    cwd=self.tree,
                    env=self.env,
                    check=True,
                    timeout=120,
                    stdout=subprocess.DEVNULL,
                )
            for i in range(self.processes):
                port = free_port()
                log = (self.dir / f"daphne{i}.log").open("wb")
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
                        cwd=self.tree,
                        env=self.env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
                self.ports.append(port)
            for port in self.ports:
                deadline = time.monotonic() + 30
                while True:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                            break
                    except OSError:
                        assert time.monotonic() < deadline, "daphne did not start"
                        time.sleep(0.1)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        if self.redis is not None:
            self.redis.kill()
            self.redis.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)

    def ws(self, i: int) -> str:
        return f"ws://127.0.0.1:{self.ports[i]}/ws/calls/"

    def log(self, i: int) -> str:
        return (self.dir / f"daphne{i}.log").read_text(errors="replace")

    def execute(self, statement: str, *params: Any) -> None:
        with closing(sqlite3.connect(self.db, timeout=20, isolation_level=None)) as db:
            db.execute(statement, params)

    def group_id(self) -> int:
        with closing(sqlite3.connect(self.db)) as db:
            return db.execute("SELECT id FROM chatgroups_group WHERE name = 'Demo team'").fetchone()[0]


def post(port: int, path: str, body: dict, source: str = "127.0.0.1") -> tuple[int, dict[str, str], Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60, source_address=(source, 0))
    try:
        connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        raw = response.read()
        headers = {k.lower(): v for k, v in response.getheaders()}
        try:
            data = json.loads(raw)
        except ValueError:
            data = raw.decode(errors="replace")
        return response.status, headers, data
    finally:
        connection.close()


def token(port: int, user: str) -> dict[str, str]:
    status, _, data = post(port, "/api/auth/token/", {"username": user, "password": PASSWORD})
    assert status == 200, (status, data)
    return data


class Peer:
    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.frames: list[tuple[float, dict]] = []
        self.socket_id = ""
        self.connected: dict = {}
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self._event = asyncio.Event()
        self.reader = asyncio.get_running_loop().create_task(self._read())
        self._ids = 0

    async def _read(self) -> None:
        try:
            async for text in self.connection:
                self.frames.append((time.monotonic(), json.loads(text)))
                self._event.set()
        except Exception:  # noqa: S110
            pass
        finally:
            self.closed_at = time.monotonic()
            self.close_code = self.connection.close_code
            self._event.set()

    async def wait(self, predicate: Any, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for _, frame in self.frames[seen:]:
                if predicate(frame):
                    return frame
            seen = len(self.frames)
            if self.closed_at is not None or time.monotonic() >= deadline:
                return None
            self._event.clear()
            try:
                await asyncio.wait_for(self._event.wait(), deadline - time.monotonic())
            except TimeoutError:
                pass

    async def send(self, event: str, data: dict, with_id: bool = False) -> str | None:
        frame: dict[str, Any] = {"event": event, "data": data}
        request_id = None
        if with_id:
            self._ids += 1
            request_id = frame["id"] = f"m{self._ids}"
        try:
            await self.connection.send(json.dumps(frame))
        except Exception:
            return None
        return request_id

    async def request(self, event: str, data: dict, timeout: float = 10) -> dict | None:
        request_id = await self.send(event, data, True)
        if request_id is None:
            return None
        return await self.wait(lambda f: f.get("id") == request_id, timeout)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.connection.close(), 5)
        except Exception:  # noqa: S110
            pass
        self.reader.cancel()


async def open_peer(url: str, access: str, timeout: float = 10) -> Peer:
    connection = await websockets.connect(f"{url}?token={access}", open_timeout=timeout, max_queue=None)
    peer = Peer(connection)
    frame = await peer.wait(lambda f: f["event"] == "webrtc:connected", timeout)
    if frame is not None:
        peer.connected = frame["data"]
        peer.socket_id = frame["data"]["socketId"]
    return peer


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)], 3)


# ---------------------------------------------------------------------------


async def squat(tree: Path) -> dict:
    out: dict[str, Any] = {}
    with Cluster(tree, 3) as c:
        gid = c.group_id()
        room = f"group-{gid}"
        tok = {u: token(c.ports[0], u)["access"] for u in ("dave", "alice", "bob")}
        # (a) one squatter: do the members' frames reach him?
        dave = await open_peer(c.ws(0), tok["dave"])
        reply = await dave.request("webrtc:join-room", {"callRoomId": room})
        out["squatter_join"] = reply["event"] if reply else None
        alice, bob = await open_peer(c.ws(1), tok["alice"]), await open_peer(c.ws(2), tok["bob"])
        ja = await alice.request("webrtc:join-room", {"callRoomId": room, "metadata": {"groupId": gid}})
        jb = await bob.request("webrtc:join-room", {"callRoomId": room, "metadata": {"groupId": gid}})
        out["members_join_replies"] = [ja and ja["event"], jb and jb["event"]]
        out["squatter_seen_by_member"] = bool(
            ja and any(p["socketId"] == dave.socket_id for p in ja["data"].get("existingParticipants", []))
        )
        offer = {"type": "offer", "sdp": "v=0"}
        await alice.send("webrtc:offer", {"callRoomId": room, "targetSocketId": bob.socket_id, "offer": offer})
        await alice.send("webrtc:ice-candidate", {"callRoomId": room, "candidate": "c1"})
        await bob.send("webrtc:ice-candidate", {"callRoomId": room, "candidate": "c2"})
        await bob.wait(lambda f: f["event"] == "webrtc:offer", 5)
        await asyncio.sleep(1.0)
        members = {alice.socket_id, bob.socket_id}
        got = [
            f
            for _, f in dave.frames
            if (f.get("data") or {}).get("fromSocketId") in members
            or ((f.get("data") or {}).get("participant") or {}).get("socketId") in members
        ]
        out["member_frames_at_squatter"] = {
            e: sum(1 for f in got if f["event"] == e) for e in {f["event"] for f in got}
        }
        for p in (dave, alice, bob):
            await p.close()
        await asyncio.sleep(1.5)
        # (b) sixteen squatter sockets: is the group's call filled?
        squatters = []
        for _i in range(16):
            p = await open_peer(c.ws(0), tok["dave"])
            squatters.append(p)
        admitted = [p for p in squatters if p.socket_id]
        in_room = 0
        for p in admitted:
            r = await p.request("webrtc:join-room", {"callRoomId": room})
            in_room += bool(r and r["event"] == "webrtc:room-joined")
        out["squatter_sockets_admitted_of_16"] = len(admitted)
        out["squatter_sockets_in_room"] = in_room
        alice = await open_peer(c.ws(1), tok["alice"])
        r = await alice.request("webrtc:join-room", {"callRoomId": room, "metadata": {"groupId": gid}})
        if r is None:
            out["member_join_after_fill"] = "no reply"
        elif r["event"] == "webrtc:signaling-error":
            out["member_join_after_fill"] = r["data"].get("error")
        else:
            out["member_join_after_fill"] = f"joined, participantCount={r['data']['participantCount']}"
        for p in [*squatters, alice]:
            await p.close()
    return out


async def connections(tree: Path) -> dict:
    with Cluster(tree, 3) as c:
        access = token(c.ports[0], "alice")["access"]
        opened: list[Peer] = []
        refused: dict[str, int] = {}
        attempts = 0
        started = time.monotonic()
        end = started + CONNECT_WINDOW_SECS
        counter = iter(range(10**9))

        async def opener() -> None:
            nonlocal attempts
            while time.monotonic() < end and len(opened) < CONNECT_MAX:
                n = next(counter)
                attempts += 1
                try:
                    peer = await open_peer(c.ws(n % 3), access, timeout=max(0.1, end - time.monotonic()))
                except Exception as exc:
                    refused[type(exc).__name__] = refused.get(type(exc).__name__, 0) + 1
                    continue
                if peer.socket_id:
                    opened.append(peer)
                else:
                    key = f"close {peer.close_code}"
                    refused[key] = refused.get(key, 0) + 1
                    peer.reader.cancel()

        await asyncio.gather(*(opener() for _ in range(CONNECT_CONCURRENCY)))
        elapsed = time.monotonic() - started
        still_open = sum(1 for p in opened if p.closed_at is None)
        await asyncio.gather(*(p.close() for p in opened))
        return {
            "open_sockets_one_token": still_open,
            "attempts": attempts,
            "refused": refused,
            "window_secs": round(elapsed, 2),
        }


class Flood:
    def __init__(self) -> None:
        self.sent = self.rooms = self.rate_limited = self.unanswered = 0
        self.errors: dict[str, int] = {}
        self.closes: list[int | None] = []

    async def cycle(self, connection: Any, index: int, stop: asyncio.Event) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            rid = f"f{index}-{n}"
            try:
                await connection.send(
                    json.dumps({"event": "webrtc:join-room", "data": {"callRoomId": f"flood-{index}-{n}"}, "id": rid})
                )
                self.sent += 1
                async with asyncio.timeout(FLOOD_REPLY_TIMEOUT_SECS):
                    while (reply := json.loads(await connection.recv())).get("id") != rid:
                        pass
            except TimeoutError:
                self.unanswered += 1
                continue
            except websockets.ConnectionClosed:
                self.closes.append(connection.close_code)
                return
            if reply["event"] == "webrtc:room-joined":
                self.rooms += 1
            elif reply["data"]["error"] == "rate-limited":
                self.rate_limited += 1
            else:
                self.errors[reply["data"]["error"]] = self.errors.get(reply["data"]["error"], 0) + 1


async def start_flood(peers: list[Peer]) -> tuple[Flood, asyncio.Event, list[asyncio.Task]]:
    for p in peers:
        p.reader.cancel()
    await asyncio.gather(*(p.reader for p in peers), return_exceptions=True)
    flood, stop = Flood(), asyncio.Event()
    tasks = [asyncio.create_task(flood.cycle(p.connection, i, stop)) for i, p in enumerate(peers)]
    return flood, stop, tasks


async def flood(tree: Path) -> dict:
    with Cluster(tree, 1) as c:
        tok = {u: token(c.ports[0], u)["access"] for u in ("dave", "alice", "bob", "carol")}
        flooders = [await open_peer(c.ws(0), tok["dave"]) for _ in range(FLOOD_SOCKETS)]
        probes: list[dict] = []
        probe_tasks: list[asyncio.Task] = []

        async def probe(user: str, t0: float) -> None:
            began = time.monotonic()
            record: dict[str, Any] = {"start": began - t0}
            try:
                peer = await open_peer(c.ws(0), tok[user], timeout=PROBE_TIMEOUT_SECS)
                record["secs"] = time.monotonic() - began
                record["ok"] = bool(peer.socket_id)
                await peer.close()
            except Exception as exc:
                record["secs"] = time.monotonic() - began
                record["ok"] = False
                record["error"] = type(exc).__name__
            probes.append(record)

        fl, stop, tasks = await start_flood(flooders)
        t0 = time.monotonic()
        users = ("alice", "bob", "carol")
        n = 0
        while (now := time.monotonic()) < t0 + FLOOD_SECS + AFTER_SECS:
            if now >= t0 + FLOOD_SECS and not stop.is_set():
                stop.set()
                rooms_in_flood, sent_in_flood = fl.rooms, fl.sent
            probe_tasks.append(asyncio.create_task(probe(users[n % 3], t0)))
            n += 1
            await asyncio.sleep(PROBE_EVERY_SECS)
        await asyncio.wait(probe_tasks, timeout=PROBE_TIMEOUT_SECS + 5)
        for t in tasks:
            t.cancel()
        during = [p for p in probes if p["start"] < FLOOD_SECS]
        after = [p for p in probes if p["start"] >= FLOOD_SECS]
        slow = [p for p in probes if not p["ok"] or p["secs"] > 1.0]

        def summary(group: list[dict]) -> dict:
            ok = [p["secs"] for p in group if p["ok"]]
            return {
                "n": len(group),
                "failed": sum(1 for p in group if not p["ok"]),
                "p50": pct(ok, 0.5),
                "p99": pct([p["secs"] for p in group], 0.99),
                "max": round(max(p["secs"] for p in group), 3) if group else None,
            }

        return {
            "rooms_created": rooms_in_flood,
            "rooms_per_sec": round(rooms_in_flood / FLOOD_SECS, 1),
            "joins_sent": sent_in_flood,
            "rate_limited_replies": fl.rate_limited,
            "unanswered": fl.unanswered,
            "other_errors": fl.errors,
            "flood_closes": fl.closes,
            "handshakes_during_flood": summary(during),
            "handshakes_after_flood": summary(after),
            "last_slow_handshake_started_secs_after_flood_end": round(max(p["start"] for p in slow) - FLOOD_SECS, 1)
            if slow
            else None,
            "failure_kinds": sorted({p.get("error", "closed") for p in probes if not p["ok"]}),
        }


async def cascade(tree: Path) -> dict:
    with Cluster(tree, 3, CALLS_PRESENCE_TTL_SECS=str(CASCADE_TTL_SECS)) as c:
        tok = {u: token(c.ports[i % 3], u)["access"] for i, u in enumerate(("alice", "bob", "carol", "dave"))}
        alice, bob = await open_peer(c.ws(0), tok["alice"]), await open_peer(c.ws(1), tok["bob"])
        carols = [await open_peer(c.ws(2), tok["carol"]) for _ in range(2)]
        for p in (alice, bob, *carols):
            await p.request("webrtc:join-room", {"callRoomId": "cascade"})
        flooders = [await open_peer(c.ws(0), tok["dave"]) for _ in range(FLOOD_SOCKETS)]
        db = sqlite3.connect(c.db, timeout=20, isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked = True
        try:
            fl, stop, tasks = await start_flood(flooders)
            await asyncio.sleep(1.0)
            killed = time.monotonic()
            c.procs[2].kill()
            while time.monotonic() < killed + CASCADE_WATCH_SECS:
                if locked and time.monotonic() >= killed + CASCADE_LOCK_SECS:
                    db.execute("ROLLBACK")
                    locked = False
                    stop.set()  # the flood ends with the lock: the backlog can drain
                await asyncio.sleep(0.1)
            stop.set()
            for t in tasks:
                t.cancel()
        finally:
            if locked:
                db.execute("ROLLBACK")
            db.close()
        carol_ids = {p.socket_id for p in carols}
        out: dict[str, Any] = {}
        for name, p in (("alice@P0", alice), ("bob@P1", bob)):
            lefts = [
                (round(t - killed, 2), f["data"]["participant"]["username"], f["data"]["reason"])
                for t, f in p.frames
                if f["event"] == "webrtc:participant-left"
            ]
            lost = [
                t
                for t, f in p.frames
                if f["event"] == "webrtc:participant-left" and f["data"]["participant"]["socketId"] in carol_ids
            ]
            out[name] = {
                "secs_to_lost_of_killed": [round(t - killed, 2) for t in lost]
                or f"none within {CASCADE_WATCH_SECS:.0f}s",
                "participant_left_frames": lefts,
                "closed": None if p.closed_at is None else {"code": p.close_code, "at": round(p.closed_at - killed, 2)},
            }
        out["flood_socket_closes"] = fl.closes
        out["declared_dead_log_lines"] = [c.log(i).count("declared dead") for i in (0, 1)]
        out["closes_1001"] = sum(1 for p in (alice, bob) if p.close_code == 1001) + fl.closes.count(1001)
        out["rooms_created_by_flood"] = fl.rooms
        for p in (alice, bob):
            await p.close()
        return out


async def credentials(tree: Path) -> dict:
    out: dict[str, Any] = {}
    # (a) an access token that expires (JWT_ACCESS_TTL_SECS=3), never refreshed
    with Cluster(tree, 1, JWT_ACCESS_TTL_SECS=str(JWT_TTL_SECS)) as c:
        access = token(c.ports[0], "alice")["access"]
        exp = json.loads(__import__("base64").urlsafe_b64decode(access.split(".")[1] + "=="))["exp"]
        peer = await open_peer(c.ws(0), access)
        out["expiry_authExpiresAt_in_connected"] = "authExpiresAt" in peer.connected
        answered_after_expiry = 0
        while time.time() < exp + CRED_WATCH_SECS and peer.closed_at is None:
            r = await peer.request("webrtc:leave-room", {"callRoomId": "x"}, timeout=2)
            if r is not None and time.time() > exp:
                answered_after_expiry += 1
            await asyncio.sleep(0.5)
        out["expiry"] = (
            f"closed {peer.close_code} {time.time() - exp:.1f}s after exp"
            if peer.closed_at is not None
            else f"still open {CRED_WATCH_SECS:.0f}s after exp"
        )
        out["expiry_requests_answered_after_exp"] = answered_after_expiry
        await peer.close()
    # (b) deactivated (bob) and removed from the group (carol), on three processes
    with Cluster(tree, 3) as c:
        gid = c.group_id()
        room = f"group-{gid}"
        tok = {u: token(c.ports[i], u)["access"] for i, u in enumerate(("alice", "bob", "carol"))}
        peers = {u: [await open_peer(c.ws(i), tok[u]) for i in range(3)] for u in tok}
        for u in peers:
            for p in peers[u]:
                await p.request("webrtc:join-room", {"callRoomId": room, "metadata": {"groupId": gid}})
        watcher = peers["alice"][0]
        c.execute("UPDATE accounts_user SET is_active = 0 WHERE username = 'bob'")
        c.execute(
            "DELETE FROM chatgroups_membership WHERE group_id = ? AND user_id = "
            "(SELECT id FROM accounts_user WHERE username = 'carol')",
            gid,
        )
        t0 = time.monotonic()
        marks = {p.socket_id: u for u in ("bob", "carol") for p in peers[u]}
        while time.monotonic() < t0 + CRED_WATCH_SECS:
            for u in ("bob", "carol"):
                for p in peers[u]:
                    if p.closed_at is None:
                        await p.send("webrtc:ice-candidate", {"callRoomId": room, "candidate": "still-here"})
            await asyncio.sleep(0.5)
        late = [f for t, f in watcher.frames if t > t0 + 5 and f["event"] == "webrtc:ice-candidate"]
        for u in ("bob", "carol"):
            closes = [None if p.closed_at is None else (p.close_code, round(p.closed_at - t0, 2)) for p in peers[u]]
            removed = [
                round(t - t0, 2)
                for t, f in watcher.frames
                if f["event"] == "webrtc:participant-left" and marks.get(f["data"]["participant"]["socketId"]) == u
            ]
            reasons = sorted(
                {
                    f["data"]["reason"]
                    for _, f in watcher.frames
                    if f["event"] == "webrtc:participant-left" and marks.get(f["data"]["participant"]["socketId"]) == u
                }
            )
            out[u] = {
                "closes_per_process": closes,
                "left_room_at_watcher_secs": removed or f"none within {CRED_WATCH_SECS:.0f}s",
                "leave_reasons": reasons,
                "candidates_reaching_alice_5_to_15s_after": sum(
                    1 for f in late if marks.get(f["data"]["fromSocketId"]) == u
                ),
            }
        for u in peers:
            for p in peers[u]:
                await p.close()
    return out


async def logins(tree: Path) -> dict:
    out: dict[str, Any] = {}
    with Cluster(tree, 2) as c:

        def run(names: list[str], source: str) -> dict:
            results: list[tuple[float, int, str]] = []
            began = time.monotonic()

            def attempt(pair: tuple[int, str]) -> None:
                i, name = pair
                status, headers, _ = post(
                    c.ports[i % 2], "/api/auth/token/", {"username": name, "password": "wrong-guess"}, source
                )
                results.append((time.monotonic(), status, headers.get("retry-after", "")))

            with ThreadPoolExecutor(max_workers=2) as pool:
                list(pool.map(attempt, enumerate(names)))
            results.sort()
            statuses = [s for _, s, _ in results]
            first_429 = statuses.index(429) if 429 in statuses else None
            return {
                "answered_before_first_429": first_429 if first_429 is not None else f"all {len(statuses)}",
                "status_counts": {str(s): statuses.count(s) for s in sorted(set(statuses))},
                "first_retry_after": next((ra for _, s, ra in results if s == 429), None),
                "rate_per_sec": round(len(statuses) / (time.monotonic() - began), 1),
            }

        out["one_username"] = run(["alice"] * LOGIN_ATTEMPTS, "127.0.0.1")
        out["distinct_usernames_one_address"] = run([f"guess-{n}" for n in range(LOGIN_ATTEMPTS)], "127.0.0.2")
    return out


SCENARIOS = {
    "squat": squat,
    "connections": connections,
    "flood": flood,
    "cascade": cascade,
    "credentials": credentials,
    "logins": logins,
}


async def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    tree, out_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
    names = sys.argv[3:] or list(SCENARIOS)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for name in names:
        began = time.monotonic()
        print(f"== {name} on {tree}", flush=True)
        try:
            results[name] = await SCENARIOS[name](tree)
        except Exception as exc:
            results[name] = {"error": repr(exc)}
        results[name]["_secs"] = round(time.monotonic() - began, 1)
        print(json.dumps(results[name], indent=1), flush=True)
        out_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
