"""Relay latency and server CPU per relayed message, on real server processes.

Starts the servers itself (one daphne process with the in-memory layer, or two daphne
processes sharing a fresh redis-server with the chosen Redis channel layer), connects
two clients (on different processes when there are two), and measures:

- latency: N sequential ping-pongs of targeted ICE candidates (one in flight at a time),
  half the round trip per relay, p50/p99;
- CPU: M candidates from one client to the other, as fast as the server relays them
  with at most 64 in flight, and the servers' (and Redis's) user+system CPU from /proc per relayed message.

Usage: python -m bench.relay [--mode memory|core|pubsub|all] [--pings N] [--burst M]
Loopback only; everything it starts is stopped when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_server import RedisServer
from tests.servers import Server, prepare_database, server_env, start_daphnes
from tests.wsclient import WsClient

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
ROOM = "bench"
BURST_WINDOW = 64  # channels_redis.core keeps at most 100 messages per channel


def cpu_secs(pid: int) -> float:
    """User + system CPU seconds of a process (fields 14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


async def ping_pong(a: WsClient, b: WsClient, count: int) -> list[float]:
    latencies = []
    for i in range(count):
        started = time.perf_counter()
        await a.send("webrtc:ice-candidate", {"callRoomId": ROOM, "targetSocketId": b.socket_id, "candidate": f"p{i}"})
        await b.expect("webrtc:ice-candidate")
        await b.send("webrtc:ice-candidate", {"callRoomId": ROOM, "targetSocketId": a.socket_id, "candidate": f"q{i}"})
        await a.expect("webrtc:ice-candidate")
        latencies.append((time.perf_counter() - started) / 2 * 1000)
    return latencies


async def burst(a: WsClient, b: WsClient, count: int, window: int = BURST_WINDOW) -> float:
    """Send ``count`` candidates with at most ``window`` undelivered at once (below every
    layer's per-channel capacity, so nothing is dropped); return the seconds taken."""
    frames = [
        json.dumps({"event": "webrtc:ice-candidate",
                    "data": {"callRoomId": ROOM, "targetSocketId": b.socket_id, "candidate": f"candidate:{i} 1 udp"}})
        for i in range(count)
    ]  # fmt: skip
    credit = asyncio.Semaphore(window)
    started = time.perf_counter()

    async def receive_all() -> None:
        for _ in range(count):
            await b.expect("webrtc:ice-candidate", timeout=30)
            credit.release()

    receiver = asyncio.ensure_future(receive_all())
    for frame in frames:
        await credit.acquire()
        await a.connection.send(frame)
    await receiver
    return time.perf_counter() - started


async def measure(mode: str, pings: int, burst_size: int, workdir: Path) -> dict:
    workdir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(workdir / "redis").start() if mode != "memory" else None
    extra = {"CALLS_RATE_LIMIT": "100000", "CALLS_RATE_BURST": "100000", "LOG_LEVEL": "WARNING"}
    if redis is not None:
        extra |= {"REDIS_URL": redis.url, "REDIS_CHANNEL_LAYER": mode}
    env = server_env(workdir / "db.sqlite3", **extra)
    servers: list[Server] = []
    try:
        prepare_database(env)
        count = 1 if mode == "memory" else 2
        servers = start_daphnes(env, [workdir / f"daphne-{mode}-{i}.log" for i in range(count)])
        a = await WsClient.open(servers[0].ws, servers[0].token("alice"))
        b = await WsClient.open(servers[-1].ws, servers[0].token("bob"))
        await a.join(ROOM)
        await b.join(ROOM)
        await a.expect("webrtc:participant-joined")
        await ping_pong(a, b, 50)  # warm-up
        latencies = await ping_pong(a, b, pings)
        pids = [s.process.pid for s in servers]
        before = [cpu_secs(pid) for pid in pids]
        redis_pid = redis.process.pid if redis is not None and redis.process is not None else None
        redis_before = cpu_secs(redis_pid) if redis_pid is not None else 0.0
        elapsed = await burst(a, b, burst_size)
        server_cpu = sum(cpu_secs(pid) - b0 for pid, b0 in zip(pids, before, strict=True))
        redis_cpu = (cpu_secs(redis_pid) - redis_before) if redis_pid is not None else 0.0
        await a.close()
        await b.close()
        quantiles = statistics.quantiles(latencies, n=100)
        return {
            "mode": mode,
            "processes": count,
            "relay_p50_ms": round(statistics.median(latencies), 3),
            "relay_p99_ms": round(quantiles[98], 3),
            "burst": burst_size,
            "burst_rate_per_s": round(burst_size / elapsed),
            "server_cpu_ms_per_relay": round(server_cpu * 1000 / burst_size, 4),
            "redis_cpu_ms_per_relay": round(redis_cpu * 1000 / burst_size, 4),
        }
    finally:
        for server in servers:
            server.stop()
        if redis is not None:
            redis.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["memory", "core", "pubsub", "all"], default="all")
    parser.add_argument("--pings", type=int, default=500)
    parser.add_argument("--burst", type=int, default=5000)
    args = parser.parse_args()
    modes = ["memory", "core", "pubsub"] if args.mode == "all" else [args.mode]
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        results = [asyncio.run(measure(mode, args.pings, args.burst, Path(tmp) / mode)) for mode in modes]
    header = list(results[0])
    print(" | ".join(header))
    for row in results:
        print(" | ".join(str(row[k]) for k in header))
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
