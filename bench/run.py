"""Signaling benchmark: starts the server itself, drives it with bench/loadgen.mjs, and
reports a markdown table and one JSON line per run (docs/benchmarks.md).

Scenarios (open-loop: the generator sends on a timer, whatever the server answers):

- S1: 100 rooms x 4 participants joining one by one at 100 joins/s, each newcomer
  offering to everyone present (the target answers), 8 ICE candidates each way per pair
  (10,800 relays); then 10 s of targeted ICE at 5,000 msg/s.
- S2: 25 rooms x 8, the same setup (12,600 relays); then 10 s at 20,000 msg/s.
- idle: 10,000 authenticated connections held open; server RSS per connection.
- overload: S2's rooms, then 10 s at 40,000 msg/s and at once a probe at 1,000 msg/s for
  8 s: what was lost or closed, peak RSS, and when p99 was back under 50 ms.

After the steady phase, a bisection finds the highest steady rate held: every message
delivered exactly once to its target, relay p99 under 50 ms, the generator not saturated.

Usage:
    python -m bench.run [--server daphne,uvicorn,granian,mock,ref-node] [--processes N]
                        [--scenarios S1,S2,idle,overload] [--framing native,socketio] [--ref-node DIR]
                        [--quick] [--no-bisect] [--matrix] [--targets] [--help for the rest]

``--matrix`` runs the reference set of docs/benchmarks.md (daphne and uvicorn with one
process, daphne with two processes and Redis; S1, S2 and idle). ``--framing`` chooses the
project's endpoint: native (``/ws/calls/``) or Socket.IO (``/socket.io/``), or both.
``--ref-node DIR`` names a directory holding a Node + Socket.IO implementation of the
same protocol (``server.js``; its npm dependencies are bench/package.json's), which then
runs beside the project's servers in the same invocation, on the same core, speaking
Socket.IO: every configuration's CPU per relay is also printed as a ratio to it.
``--targets`` runs what the performance targets need (TARGET_CONFIGS, with ref-node from
``--ref-node`` or ``REF_NODE_DIR``) and ends with the targets report: one row per target,
the project's figure, ref-node's, the ratio, the target and whether it is met. Loopback
only; every process it starts is stopped when it ends, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

import jwt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.redis_server import RedisServer
from tests.servers import (
    PROJECT_DIR,
    SERVER_COMMANDS,
    STARTUP_TIMEOUT_SECS,
    Server,
    free_port,
    prepare_database,
    server_env,
    start_servers,
)

BENCH_DIR = Path(__file__).resolve().parent
LOADGEN = BENCH_DIR / "loadgen.mjs"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MAX_RESTARTS = 4  # fresh servers for one bisection, after overloads left them unusable
BISECT_RATIO = 1.1  # the bisection stops when its bounds are this close
DRAIN_SECS = 30 + 10  # the generator's longest wait for a backlog, then for idle servers
BENCH_PASSWORD = "bench-pass-123"  # noqa: S105 - throwaway users of a throwaway database
# The generator's clients send far above the per-connection default (S2 at 20,000 msg/s
# is 100 frames/s per client, at the default limit; bisection goes to 40,000).
RATE_LIMIT = "1000000"
BENCH_ENV = {
    "CALLS_RATE_LIMIT": RATE_LIMIT,
    "CALLS_RATE_BURST": RATE_LIMIT,
    "LOG_LEVEL": "WARNING",
    "JWT_ACCESS_TTL_SECS": "86400",  # tokens are minted once for the whole run
    "CALLS_SHUTDOWN_TIMEOUT_SECS": "5",
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    rooms: int = 0
    size: int = 0
    rate: int = 0
    idle_connections: int = 0
    # overload: the steady phase is ``rate`` for the run's duration, then at once a probe
    # at ``probe_rate`` for ``probe_secs`` (no bisection)
    overload: bool = False
    probe_rate: int = 0
    probe_secs: float = 0

    @property
    def clients(self) -> int:
        return self.idle_connections or self.rooms * self.size


SCENARIOS = {
    "S1": Scenario("S1", rooms=100, size=4, rate=5000),
    "S2": Scenario("S2", rooms=25, size=8, rate=20000),
    "idle": Scenario("idle", idle_connections=10000),
    "overload": Scenario("overload", rooms=25, size=8, rate=40000, overload=True, probe_rate=1000, probe_secs=8),
}
QUICK = {
    "S1": Scenario("S1", rooms=10, size=4, rate=1000),
    "S2": Scenario("S2", rooms=5, size=8, rate=2000),
    "idle": Scenario("idle", idle_connections=500),
    "overload": Scenario("overload", rooms=5, size=8, rate=8000, overload=True, probe_rate=500, probe_secs=4),
}
OVERLOAD_DRAIN_SECS = 120  # the longest wait for an overload's backlog (the generator's)
MATRIX = [("daphne", 1, ["S1", "S2", "idle"]), ("uvicorn", 1, ["S1", "S2", "idle"]), ("daphne", 2, ["S1", "S2"])]
REF_NODE = "ref-node"  # the Node + Socket.IO implementation that the figures are compared with
SERVER_KINDS = ["daphne", "uvicorn", "granian", "mock", REF_NODE]
FRAMINGS = ["native", "socketio"]
# The project's two endpoints; ref-node speaks Socket.IO only, the mock native frames only.
ENDPOINTS = {"native": "/ws/calls/", "socketio": "/socket.io/?EIO=4&transport=websocket"}


@dataclasses.dataclass(frozen=True)
class Config:
    """One server configuration of a run: what serves, how many processes, which framing."""

    kind: str
    processes: int
    framing: str
    scenarios: tuple[str, ...]
    # the scenarios whose highest held rate is searched; None: all (unless --no-bisect)
    bisect: tuple[str, ...] | None = None


@dataclasses.dataclass(frozen=True)
class Credentials:
    """The tokens of one invocation: the project's access tokens, and for ref-node the
    same users' tokens signed with its secret."""

    project: Path
    ref_node: Path | None = None
    ref_node_secret: str = ""
    ref_node_dir: Path | None = None


@dataclasses.dataclass
class Options:
    duration: float
    join_rate: float
    bisect: tuple[int, int] | None
    step_secs: float
    p99_limit_ms: float
    deflate: bool
    quiet: bool
    rate: int | None
    idle_rooms_of: int = 0


@dataclasses.dataclass
class Cores:
    """Which CPU each process runs on: the generator on the last core, the servers (and
    Redis) on the others, round-robin; with one core nothing is pinned."""

    servers: list[int | None]
    redis: int | None
    generator: int | None
    note: str

    @classmethod
    def plan(cls, processes: int, with_redis: bool) -> Cores:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls([None] * processes, None, None, "one core: server and generator share it (not pinned)")
        rest = cpus[:-1]
        servers = [rest[i % len(rest)] for i in range(processes)]
        redis = rest[processes % len(rest)] if with_redis else None
        owners: dict[int, list[str]] = {}
        for i, cpu in enumerate(servers):
            owners.setdefault(cpu, []).append(f"server {i}")
        if redis is not None:
            owners.setdefault(redis, []).append("redis")
        parts = [f"core {cpu}: {', '.join(names)}" for cpu, names in sorted(owners.items())]
        parts.append(f"core {cpus[-1]}: generator")
        shared = [cpu for cpu, names in owners.items() if len(names) > 1]
        note = "; ".join(parts)
        if shared:
            note += f" ({' and '.join(owners[shared[0]])} share one core)"
        return cls(list[int | None](servers), redis, cpus[-1], note)


def taskset(cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def pin(pid: int, cpu: int | None) -> None:
    """Pin every thread of a running process to one core."""
    if cpu is None:
        return
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except ProcessLookupError:
            pass


def process_cpu_secs(pid: int) -> float:
    """User + system CPU seconds of a process (fields 14 and 15 of /proc/PID/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_secs() -> float:
    """CPU seconds the whole machine spent busy (or stolen by the hypervisor) since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLOCK_TICKS  # all but idle and iowait


def wait_for_quiet(max_secs: float, threshold: float = 0.1, window: float = 2.0) -> float:
    """Wait (at most ``max_secs``) until the machine is busy less than ``threshold`` of a
    core over ``window`` seconds; return the load last seen, in cores."""
    deadline = time.monotonic() + max_secs
    while True:
        before = machine_busy_secs()
        time.sleep(window)
        load = (machine_busy_secs() - before) / window
        if load < threshold or time.monotonic() > deadline:
            return load


def raise_open_files_limit() -> int:
    """Raise the soft limit of open files to the hard one; the servers and the generator
    inherit it (10,000 idle connections need more than the usual 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise SystemExit("bench: node (>= 20) is required for the load generator; install Node.js.")
    return found


def ensure_node_deps() -> None:
    """Install bench/package.json's dependencies (the generator's, and ref-node's) unless
    every one of them is there at its locked version."""
    node()
    wanted = json.loads((BENCH_DIR / "package.json").read_text())["dependencies"]
    if any(node_package_version(name) != version for name, version in wanted.items()):
        npm = shutil.which("npm")
        if npm is None:
            raise SystemExit("bench: npm is required to install the load generator's dependencies.")
        subprocess.run([npm, "ci", "--prefix", str(BENCH_DIR), "--no-audit", "--no-fund"], check=True, timeout=300)


def node_package_version(name: str) -> str | None:
    manifest = BENCH_DIR / "node_modules" / name / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None


# ---------------------------------------------------------------- database and tokens

MINT_TOKENS = """
import json, os
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from rest_framework_simplejwt.tokens import AccessToken

User = get_user_model()
count = int(os.environ["BENCH_USERS"])
names = [f"bench{i}" for i in range(count)]
existing = set(User.objects.filter(username__startswith="bench").values_list("username", flat=True))
password = make_password(os.environ["BENCH_PASSWORD"])
User.objects.bulk_create(
    [User(username=name, display_name=name.capitalize(), password=password) for name in names if name not in existing],
    batch_size=500,
)
users = User.objects.in_bulk(names, field_name="username")
with open(os.environ["BENCH_TOKENS"], "w") as out:
    json.dump([str(AccessToken.for_user(users[name])) for name in names], out)
"""


def mint_tokens(env: dict[str, str], count: int, path: Path) -> Path:
    """Create users bench0..bench{count-1} (one password hash for all) and write one
    access token each to ``path``, in a single Django shell."""
    extra = {"BENCH_USERS": str(count), "BENCH_PASSWORD": BENCH_PASSWORD, "BENCH_TOKENS": str(path)}
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", MINT_TOKENS],
        cwd=PROJECT_DIR,
        env=env | extra,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )
    return path


def mint_ref_node_tokens(project_tokens: Path, secret: str, path: Path) -> Path:
    """The same users' tokens for ref-node: HS256 JWTs with their ``user_id``, signed with
    the ``JWT_SECRET`` that ref-node is started with."""
    expires = int(time.time()) + int(BENCH_ENV["JWT_ACCESS_TTL_SECS"])
    claims = [
        jwt.decode(token, options={"verify_signature": False}) for token in json.loads(project_tokens.read_text())
    ]
    tokens = [jwt.encode({"user_id": str(c["user_id"]), "exp": expires}, secret, algorithm="HS256") for c in claims]
    path.write_text(json.dumps(tokens))
    return path


# ---------------------------------------------------------------- servers


def server_command(kind: str, port: int) -> list[str]:
    if kind == "mock":
        return [node(), str(BENCH_DIR / "mock_server.mjs"), "--port", str(port)]
    return SERVER_COMMANDS[kind](port)


def start_ref_node(credentials: Credentials, cpu: int | None, workdir: Path) -> Server:
    """Start ``server.js`` of the ref-node directory on a free port, pinned like a server,
    with bench/node_modules as its NODE_PATH; wait until it answers ``/stats``."""
    assert credentials.ref_node_dir is not None
    script = credentials.ref_node_dir / "server.js"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VERBOSE", "SIO_POLLING", "NODE_OPTIONS")}
    env |= {"PORT": str(port), "JWT_SECRET": credentials.ref_node_secret, "NODE_PATH": str(BENCH_DIR / "node_modules")}
    log_path = workdir / f"{REF_NODE}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*taskset(cpu), node(), str(script)], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(port, process, log_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{REF_NODE} exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.http}/stats", timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    pin(process.pid, cpu)
                    return server
        except OSError:
            time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"{REF_NODE} did not start within {STARTUP_TIMEOUT_SECS:.0f}s:\n{server.log()[-4000:]}")


def endpoint(server: Server, framing: str) -> str:
    return f"ws://127.0.0.1:{server.port}{ENDPOINTS[framing]}"


def start_kind(kind: str, env: dict[str, str], cores: list[int | None], workdir: Path) -> list[Server]:
    """Start one server of ``kind`` per core entry, pinned to it."""
    log_paths = [workdir / f"{kind}-{i}.log" for i in range(len(cores))]
    servers = start_servers(lambda index, port: taskset(cores[index]) + server_command(kind, port), env, log_paths)
    for server, cpu in zip(servers, cores, strict=True):
        for pid in server.pids():
            pin(pid, cpu)
    return servers


# ---------------------------------------------------------------- one run


def bisect_steps(lo: int, hi: int, ratio: float = BISECT_RATIO) -> int:
    return math.ceil(math.log2(max(2.0, math.log(hi / lo) / math.log(ratio)))) + 1


def loadgen_args(scenario: Scenario, options: Options, bisect: tuple[int, int] | None, duration: float) -> list[str]:
    if scenario.idle_connections:
        return ["--mode", "idle", "--idle-connections", str(scenario.idle_connections), "--connect-concurrency", "64",
                "--idle-rooms-of", str(options.idle_rooms_of)]  # fmt: skip
    rate = options.rate or scenario.rate
    args = ["--mode", "scenario", "--rooms", str(scenario.rooms), "--size", str(scenario.size),
            "--join-rate", str(options.join_rate), "--rate", str(rate), "--duration", str(duration),
            "--p99-limit-ms", str(options.p99_limit_ms), "--step-secs", str(options.step_secs)]  # fmt: skip
    if bisect is not None:
        args += ["--bisect-lo", str(bisect[0]), "--bisect-hi", str(bisect[1]), "--bisect-ratio", str(BISECT_RATIO)]
    if scenario.overload:
        args += ["--overload", "--probe-rate", str(scenario.probe_rate), "--probe-secs", str(scenario.probe_secs),
                 "--overload-drain-max-secs", str(OVERLOAD_DRAIN_SECS)]  # fmt: skip
    return args


def generator_deadline(scenario: Scenario, options: Options, bisect: tuple[int, int] | None, duration: float) -> float:
    if scenario.idle_connections:
        return 120 + scenario.idle_connections / 50
    secs = 60 + scenario.clients / options.join_rate + 2 * DRAIN_SECS + duration
    if bisect is not None:
        secs += bisect_steps(*bisect) * (options.step_secs + DRAIN_SECS)
    if scenario.overload:
        secs += scenario.probe_secs + 2 * OVERLOAD_DRAIN_SECS
    return secs


def run_generator(
    servers: list[Server],
    redis: RedisServer | None,
    tokens: Path,
    cpu: int | None,
    args: list[str],
    deadline: float,
    options: Options,
    framing: str = "native",
    connected_on: str = "event",
) -> dict[str, Any]:
    command = [*taskset(cpu), node(), str(LOADGEN), "--framing", framing, "--connected-on", connected_on,
        "--urls", ",".join(endpoint(s, framing) for s in servers), "--tokens", str(tokens),
        "--pids", ",".join(str(pid) for s in servers for pid in s.pids()), "--clk-tck", str(CLOCK_TICKS),
        "--deadline", str(round(deadline)), *args]  # fmt: skip
    if redis is not None and redis.process is not None:
        command += ["--redis-pid", str(redis.process.pid)]
    if options.deflate:
        command.append("--deflate")
    if options.quiet:
        command.append("--quiet")
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, timeout=deadline + 30, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"the load generator exited with {result.returncode} and no report")
    return json.loads(lines[-1])


def run_one(config: Config, scenario: Scenario, options: Options, workdir: Path, credentials: Credentials) -> dict:
    """Start fresh servers (and Redis), run the generator against them, stop everything."""
    kind, processes = config.kind, config.processes
    tokens = credentials.ref_node if kind == REF_NODE and credentials.ref_node else credentials.project
    cores = Cores.plan(processes, with_redis=processes > 1)
    searched = config.bisect is None or scenario.name in config.bisect
    bisect = None if (scenario.idle_connections or scenario.overload or not searched) else options.bisect
    duration = 0 if scenario.idle_connections else options.duration
    report: dict[str, Any] = {}
    steps: list[dict] = []
    restarts = 0
    foreign: list[float] = []
    died: list[str] = []
    while True:
        busy_before, started = machine_busy_secs(), time.monotonic()
        with ExitStack() as stack:
            redis = None
            extra = dict(BENCH_ENV)
            if processes > 1:
                redis = RedisServer(workdir / f"redis-{kind}-{scenario.name}-{restarts}").start()
                stack.callback(redis.stop)
                assert redis.process is not None
                pin(redis.process.pid, cores.redis)
                extra["REDIS_URL"] = redis.url
            env = server_env(workdir / "db.sqlite3", **extra)
            if kind == REF_NODE:
                servers = [start_ref_node(credentials, cores.servers[0], workdir)]
            else:
                servers = start_kind(kind, env, cores.servers, workdir)
            for server in servers:
                stack.callback(server.stop)
            args = loadgen_args(scenario, options, bisect, duration)
            deadline = generator_deadline(scenario, options, bisect, duration)
            # ref-node sends no webrtc:connected: the Socket.IO CONNECT answer's sid is the socketId.
            connected_on = "sid" if kind == REF_NODE else "event"
            outcome = run_generator(
                servers, redis, tokens, cores.generator, args, deadline, options, config.framing, connected_on
            )
            ours = sum(process_cpu_secs(pid) for s in servers for pid in s.pids())
            ours += (outcome.get("generator_cpu_ms") or 0) / 1000
            if redis is not None and redis.process is not None:
                ours += process_cpu_secs(redis.process.pid)
            foreign.append((machine_busy_secs() - busy_before - ours) / (time.monotonic() - started))
            died += [s.log_path.name for s in servers if s.process.poll() is not None]
        if not report:
            report = outcome
        steps += (outcome.get("bisect") or {}).get("steps", [])
        search = outcome.get("bisect")
        if search and search["broken"] and restarts < MAX_RESTARTS and search["hi"] / search["lo"] > BISECT_RATIO:
            # An overload left the servers unfit to measure (connections lost, or a
            # backlog still being worked off): go on with fresh servers from the bounds
            # reached so far.
            restarts += 1
            bisect, duration = (search["lo"], search["hi"]), 0
            report.setdefault("bisect_restarts", []).append(
                {"lo": search["lo"], "hi": search["hi"], "why": search["broken"]}
            )
            continue
        if search:
            report["bisect"] = dict(search, steps=steps)
            best = [s["rate"] for s in steps if s["held"]]
            report["bisect"]["max_rate_held"] = max(best) if best else None
        report["servers_died"] = died
        # CPU that neither the servers, Redis nor the generator used: other load on the
        # machine, which makes the figures of this run unreliable when it is large.
        report["foreign_cpu_cores"] = round(max(0.0, *foreign), 3)  # below 0: clock-tick rounding
        break
    return summarize(config, scenario, cores, report)


STEP_KEYS = ("rate", "held", "sent", "delivered", "relay_p50_ms", "relay_p99_ms", "server_cpu_ms_per_1k",
             "redis_cpu_ms_per_1k", "generator_cpu", "errors", "closes", "servers_quiet")  # fmt: skip


def summarize(config: Config, scenario: Scenario, cores: Cores, report: dict) -> dict:
    connection = report.get("connection") or {}
    row: dict[str, Any] = {
        "server": config.kind,
        "processes": config.processes,
        "framing": config.framing,
        "scenario": scenario.name,
        "layer": "redis-pubsub" if config.processes > 1 else "in-memory",
        "cores": cores.note,
        "connections": connection.get("connections"),
        "connect_p50_ms": connection.get("connect_p50_ms"),
        "connect_p99_ms": connection.get("connect_p99_ms"),
        "rss_per_connection_kb": connection.get("rss_per_connection_kb"),
        "problem": report.get("problem"),
        "servers_died": report.get("servers_died"),
        "foreign_cpu_cores": report.get("foreign_cpu_cores"),
    }
    setup, steady, search = report.get("setup"), report.get("steady"), report.get("bisect")
    if setup:
        row |= {
            "join_p50_ms": setup["join_p50_ms"],
            "join_p99_ms": setup["join_p99_ms"],
            "setup_relays": setup["expected"],
            "setup_sent": setup["sent"],
            "setup_delivered": setup["delivered"],
            "setup_relay_p50_ms": setup["relay_p50_ms"],
            "setup_relay_p99_ms": setup["relay_p99_ms"],
            "setup_server_cpu_ms_per_1k": setup["server_cpu_ms_per_1k"],
            "setup_redis_cpu_ms_per_1k": setup["redis_cpu_ms_per_1k"],
        }
    if steady:
        row |= {
            "steady_rate": steady["rate"],
            "steady_achieved_rate": steady["achieved_rate"],
            "steady_sent": steady["sent"],
            "steady_delivered": steady["delivered"],
            "steady_relay_p50_ms": steady["relay_p50_ms"],
            "steady_relay_p99_ms": steady["relay_p99_ms"],
            "steady_server_cpu_ms_per_1k": steady["server_cpu_ms_per_1k"],
            "steady_redis_cpu_ms_per_1k": steady["redis_cpu_ms_per_1k"],
            "steady_held": steady["held"],
            "generator_cpu": steady["generator_cpu"],
            "generator_saturated": steady["generator_saturated"],
        }
    overload = report.get("overload")
    if overload:
        probe = overload["probe"]
        row |= {
            "overload_rate": overload["rate"],
            "overload_secs": overload["secs"],
            "overload_achieved_rate": overload["achieved_rate"],
            "overload_sent": overload["sent"] + probe["sent"],
            "overload_delivered": overload["delivered"] + probe["delivered"],
            # lost: not delivered once to its target by the end of the drain, or refused
            "overload_lost": sum(p["undelivered"] + p["misdelivered"] + p["duplicates"] for p in (overload, probe)),
            "overload_errors": sum(sum(p["errors"].values()) for p in (overload, probe)),
            "overload_closes": overload["closes"] + probe["closes"],
            "overload_connections_closed": overload["connections"] - overload["connections_open"],
            "overload_relay_p50_ms": overload["relay_p50_ms"],
            "overload_relay_p99_ms": overload["relay_p99_ms"],
            "overload_server_cpu_ms_per_1k": overload["server_cpu_ms_per_1k"],
            "overload_backlog_secs": overload["backlog_secs"],
            "overload_generator_cpu": overload["generator_cpu"],
            "overload_generator_saturated": overload["generator_saturated"],
            "overload_rss_before_kb": overload["server_rss_before_kb"],
            "overload_rss_peak_kb": overload["server_rss_peak_kb"],
            "overload_rss_after_kb": overload["server_rss_after_kb"],
            "probe_rate": probe["rate"],
            "probe_secs": probe["secs"],
            "probe_achieved_rate": probe["achieved_rate"],
            "probe_relay_p99_ms": probe["relay_p99_ms"],
            "recovery_secs": probe["recovery_secs"],
            "probe_windows": [[w["from_secs"], w["relay_p99_ms"], w["sent"], w["delivered"]] for w in probe["windows"]],
        }
    phases = [p for p in (setup, steady, overload, overload and overload["probe"]) if p]
    for key in ("sent", "delivered", "misdelivered", "duplicates", "undelivered"):
        row[key] = sum(p[key] for p in phases)
    totals = report.get("totals") or {}
    row["errors"] = totals.get("errors", {})
    row["closes"] = totals.get("closes", {})
    row["unexpected_events"] = totals.get("unexpectedEvents", {})
    row["bad_frames"] = totals.get("badFrames", 0)
    if search:
        held = [s for s in search["steps"] if s["held"]]
        best = max(held, key=lambda s: s["rate"]) if held else None
        row |= {
            "max_rate_held": search["max_rate_held"],
            "bisect_range": [search["lo"], search["hi"]],
            "bisect_limited_by_generator": any(not s["held"] and s["generator_saturated"] for s in search["steps"]),
            # Server CPU per relay at the highest rate held: the relay cost without a backlog.
            "held_relay_p99_ms": best["relay_p99_ms"] if best else None,
            "held_server_cpu_ms_per_1k": best["server_cpu_ms_per_1k"] if best else None,
            "held_redis_cpu_ms_per_1k": best["redis_cpu_ms_per_1k"] if best else None,
            "bisect_restarts": report.get("bisect_restarts", []),
            "bisect_steps": [{k: s[k] for k in STEP_KEYS} for s in search["steps"]],
        }
    if "joined" in report:
        row["rss_per_participant_kb"] = report["joined"]["rss_per_participant_kb"]
    row["generator_cpu_ms"] = report.get("generator_cpu_ms")
    return row


# ---------------------------------------------------------------- output


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def pair(a: Any, b: Any) -> str:
    return f"{fmt(a)} / {fmt(b)}"


def held_text(row: dict) -> str:
    """The highest rate held; "≥" when no step failed (the search ran out of range),
    "<" when none held."""
    if "max_rate_held" not in row:
        return "—"
    steps = row["bisect_steps"]
    if row["max_rate_held"] is None:
        text = f"< {fmt(min((s['rate'] for s in steps), default=row['bisect_range'][0]))}"
    elif all(s["held"] for s in steps):
        text = f"≥ {fmt(row['max_rate_held'])}"
    else:
        text = fmt(row["max_rate_held"])
    return text + (" (generator-bound)" if row.get("bisect_limited_by_generator") else "")


def delivered_text(row: dict) -> str:
    return f"{fmt(row['sent'])} {'=' if row['sent'] == row['delivered'] else '≠'} {fmt(row['delivered'])}"


def setup_cpu(row: dict) -> str:
    text = fmt(row.get("setup_server_cpu_ms_per_1k"))
    return f"{text} ; {fmt(row.get('setup_redis_cpu_ms_per_1k'))}" if row["processes"] > 1 else text


def held_cpu_text(row: dict) -> str:
    if row.get("held_server_cpu_ms_per_1k") is None:
        return "—"
    text = fmt(row["held_server_cpu_ms_per_1k"])
    if row["processes"] > 1:
        text += f" ; {fmt(row.get('held_redis_cpu_ms_per_1k'))}"
    return f"{text} ({fmt(row.get('held_relay_p99_ms'))})"


def generator_text(row: dict) -> str:
    if row.get("generator_cpu") is None:
        return "—"
    return f"{row['generator_cpu'] * 100:.0f} %{' SATURATED' if row.get('generator_saturated') else ''}"


SCENARIO_COLUMNS = [
    ("server", lambda r: r["server"]),
    ("proc", lambda r: str(r["processes"])),
    ("framing", lambda r: r.get("framing", "native")),
    ("scen.", lambda r: r["scenario"]),
    ("join p50 / p99 ms", lambda r: pair(r.get("join_p50_ms"), r.get("join_p99_ms"))),
    ("setup relay p50 / p99 ms", lambda r: pair(r.get("setup_relay_p50_ms"), r.get("setup_relay_p99_ms"))),
    ("setup CPU ms / 1k relays (server ; Redis)", setup_cpu),
    ("RSS KB / conn", lambda r: fmt(r.get("rss_per_connection_kb"))),
    ("steady rate (achieved)", lambda r: f"{fmt(r.get('steady_rate'))} ({fmt(r.get('steady_achieved_rate'))})"),
    ("steady relay p50 / p99 ms", lambda r: pair(r.get("steady_relay_p50_ms"), r.get("steady_relay_p99_ms"))),
    ("steady CPU ms / 1k", lambda r: fmt(r.get("steady_server_cpu_ms_per_1k"))),
    ("sent = delivered", delivered_text),
    ("misdelivered ; dup ; errors", lambda r: f"{r['misdelivered']} ; {r['duplicates']} ; {sum(r['errors'].values())}"),
    ("max steady rate held", held_text),
    ("CPU ms / 1k at held rate (p99 ms)", held_cpu_text),
    ("generator CPU (steady)", generator_text),
    ("other load, cores", lambda r: fmt(r.get("foreign_cpu_cores"), 2)),
]
IDLE_COLUMNS = [
    ("server", lambda r: r["server"]),
    ("proc", lambda r: str(r["processes"])),
    ("framing", lambda r: r.get("framing", "native")),
    ("idle connections", lambda r: fmt(r["connections"])),
    ("connect p50 / p99 ms", lambda r: pair(r["connect_p50_ms"], r["connect_p99_ms"])),
    ("RSS KB / connection", lambda r: fmt(r["rss_per_connection_kb"])),
    ("RSS KB / participant", lambda r: fmt(r.get("rss_per_participant_kb"))),
    ("other load, cores", lambda r: fmt(r.get("foreign_cpu_cores"), 2)),
]


def mb(kb: Any) -> str:
    return "—" if kb is None else f"{kb / 1024:,.1f}"


def recovery_text(row: dict) -> str:
    if row.get("recovery_secs") is None:
        return f"> {fmt(row.get('probe_secs'))} s" if row.get("probe_secs") is not None else "—"
    return f"{fmt(float(row['recovery_secs']), 2)} s"


OVERLOAD_COLUMNS = [
    ("server", lambda r: r["server"]),
    ("proc", lambda r: str(r["processes"])),
    ("framing", lambda r: r.get("framing", "native")),
    ("overload rate (achieved) x s", lambda r: f"{fmt(r.get('overload_rate'))} ({fmt(r.get('overload_achieved_rate'))})"
                                              f" x {fmt(r.get('overload_secs'))}"),
    ("sent = delivered (with the probe)", lambda r: f"{fmt(r.get('overload_sent'))} "
                                                   f"{'=' if r.get('overload_lost') == 0 else '≠'} "
                                                   f"{fmt(r.get('overload_delivered'))}"),
    ("lost ; errors ; closed", lambda r: f"{fmt(r.get('overload_lost'))} ; {fmt(r.get('overload_errors'))} ; "
                                        f"{fmt(r.get('overload_closes'))}"),
    ("relay p50 / p99 ms", lambda r: pair(r.get("overload_relay_p50_ms"), r.get("overload_relay_p99_ms"))),
    ("backlog worked off after", lambda r: f"{fmt(r.get('overload_backlog_secs'), 2)} s"),
    ("server RSS MB before / peak / after", lambda r: f"{mb(r.get('overload_rss_before_kb'))} / "
                                                     f"{mb(r.get('overload_rss_peak_kb'))} / "
                                                     f"{mb(r.get('overload_rss_after_kb'))}"),
    ("probe rate ; p99 ms", lambda r: f"{fmt(r.get('probe_rate'))} ; {fmt(r.get('probe_relay_p99_ms'))}"),
    ("p99 < limit again after", recovery_text),
    ("generator CPU", lambda r: generator_text({"generator_cpu": r.get("overload_generator_cpu"),
                                                "generator_saturated": r.get("overload_generator_saturated")})),
    ("other load, cores", lambda r: fmt(r.get("foreign_cpu_cores"), 2)),
]  # fmt: skip


def markdown(columns: list, rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(name for name, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [cell(row) for _, cell in columns] if not row.get("problem") else [row["problem"][:80]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# The figures compared with ref-node's in the same invocation (row key: ratio key).
RATIO_FIGURES = {
    "setup_server_cpu_ms_per_1k": "setup_cpu",
    "steady_server_cpu_ms_per_1k": "steady_cpu",
    "held_server_cpu_ms_per_1k": "held_cpu",
    "rss_per_connection_kb": "rss_per_connection",
}


def add_ratios(rows: list[dict]) -> None:
    """Set ``ratio_to_ref_node`` on every row of a scenario that ref-node ran too: each
    figure of RATIO_FIGURES divided by ref-node's (CPU of the servers only, without
    Redis's)."""
    references = {r["scenario"]: r for r in rows if r["server"] == REF_NODE and not r.get("problem")}
    for row in rows:
        reference = references.get(row["scenario"])
        if reference is None or row.get("problem"):
            continue
        ratios = {}
        for key, name in RATIO_FIGURES.items():
            ours, theirs = row.get(key), reference.get(key)
            if ours is not None and theirs:
                ratios[name] = round(ours / theirs, 2)
        row["ratio_to_ref_node"] = ratios


def ratio_cell(row: dict, key: str) -> str:
    if row.get(key) is None:
        return "—"
    ratio = (row.get("ratio_to_ref_node") or {}).get(RATIO_FIGURES[key])
    return f"{fmt(row.get(key))} ({'—' if ratio is None else f'{ratio:.2f}x'})"


RATIO_COLUMNS = [
    ("server", lambda r: r["server"]),
    ("proc", lambda r: str(r["processes"])),
    ("framing", lambda r: r["framing"]),
    ("scen.", lambda r: r["scenario"]),
    ("setup CPU ms / 1k relays (x ref-node)", lambda r: ratio_cell(r, "setup_server_cpu_ms_per_1k")),
    ("steady CPU ms / 1k (x ref-node)", lambda r: ratio_cell(r, "steady_server_cpu_ms_per_1k")),
    ("CPU ms / 1k at held rate (x ref-node)", lambda r: ratio_cell(r, "held_server_cpu_ms_per_1k")),
    ("steady relay p50 / p99 ms", lambda r: pair(r.get("steady_relay_p50_ms"), r.get("steady_relay_p99_ms"))),
]
IDLE_RATIO_COLUMNS = [
    ("server", lambda r: r["server"]),
    ("proc", lambda r: str(r["processes"])),
    ("framing", lambda r: r["framing"]),
    ("RSS KB / connection (x ref-node)", lambda r: ratio_cell(r, "rss_per_connection_kb")),
]


def table(rows: list[dict]) -> str:
    scenario_rows = [r for r in rows if r["scenario"] not in ("idle", "overload")]
    idle_rows = [r for r in rows if r["scenario"] == "idle"]
    overload_rows = [r for r in rows if r["scenario"] == "overload"]
    lines = markdown(SCENARIO_COLUMNS, scenario_rows) if scenario_rows else []
    if idle_rows:
        lines += ["", *markdown(IDLE_COLUMNS, idle_rows)]
    if overload_rows:
        lines += ["", *markdown(OVERLOAD_COLUMNS, overload_rows)]
    compared = [r for r in scenario_rows if "ratio_to_ref_node" in r]
    if compared:
        lines += ["", "Compared with ref-node in this run (server CPU; Redis's not included):", ""]
        lines += markdown(RATIO_COLUMNS, compared)
    compared = [r for r in idle_rows if "ratio_to_ref_node" in r]
    if compared:
        lines += ["", *markdown(IDLE_RATIO_COLUMNS, compared)]
    return "\n".join(lines)


FOREIGN_LOAD_WARNING = 0.15  # cores of other load that make a run's figures suspect


def progress(row: dict) -> str:
    if row.get("problem"):
        return f"problem: {row['problem']}"
    if row["scenario"] == "idle":
        text = f"{fmt(row['connections'])} connections, {fmt(row['rss_per_connection_kb'])} KB each"
    elif row["scenario"] == "overload":
        text = (
            f"overload {fmt(row.get('overload_achieved_rate'))} msg/s: lost {fmt(row.get('overload_lost'))},"
            f" closed {fmt(row.get('overload_closes'))}; RSS {mb(row.get('overload_rss_before_kb'))} →"
            f" {mb(row.get('overload_rss_peak_kb'))} MB; p99 < limit again after {recovery_text(row)}"
        )
    else:
        text = (
            f"setup {fmt(row.get('setup_server_cpu_ms_per_1k'))} CPU ms / 1k relays; steady p99"
            f" {fmt(row.get('steady_relay_p99_ms'))} ms; sent {fmt(row['sent'])}, delivered {fmt(row['delivered'])};"
            f" held {held_text(row)}"
        )
    if (row.get("foreign_cpu_cores") or 0) > FOREIGN_LOAD_WARNING:
        text += f"; WARNING: other processes used {row['foreign_cpu_cores']:.2f} cores meanwhile"
    return text


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("Django", "channels", "channels-redis", "daphne", "uvicorn", "granian", "websockets", "uvloop"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "missing"
    found["node"] = subprocess.run([node(), "--version"], capture_output=True, text=True, check=False).stdout.strip()
    for package in ("ws", "socket.io", "jsonwebtoken"):
        found[package] = node_package_version(package) or "missing"
    redis = shutil.which("redis-server")
    if redis:
        out = subprocess.run([redis, "--version"], capture_output=True, text=True, check=False).stdout
        found["redis"] = next((w.split("=")[1] for w in out.split() if w.startswith("v=")), out.strip())
    return found


def machine() -> dict[str, Any]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


# ---------------------------------------------------------------- targets

# What --targets runs: every figure that the targets below compare, and nothing more.
# Bisections only where a target reads the highest rate held (S2 on one process) or the
# CPU per relay at it (daphne, one process and two).
TARGET_CONFIGS = [
    Config("daphne", 1, "native", ("S1", "S2", "idle", "overload"), bisect=("S1", "S2")),
    Config("uvicorn", 1, "native", ("S1", "S2", "idle", "overload"), bisect=("S2",)),
    Config("daphne", 1, "socketio", ("S1", "S2"), bisect=()),
    Config("uvicorn", 1, "socketio", ("S1", "S2"), bisect=()),
    Config("daphne", 2, "native", ("S1", "S2"), bisect=("S1", "S2")),
    Config(REF_NODE, 1, "socketio", ("S1", "S2", "idle", "overload"), bisect=("S2",)),
]
QUICK_TARGETS_BISECT = "1000:4000"  # --targets --quick: a short search, to exercise it
QUICK_TARGETS_STEP_SECS = 1.0
# The highest CPU per relay (setup and steady, S1 and S2), as a multiple of ref-node's.
CPU_RATIO_TARGETS = {
    ("native", "uvicorn"): 0.75,
    ("native", "daphne"): 1.4,
    ("socketio", "uvicorn"): 0.9,
    ("socketio", "daphne"): 1.6,
}
HELD_RATE_TARGETS = {"uvicorn": 20000, "daphne": 12000}  # S2, one process, msg/s
LATENCY_TARGET_MS = 50.0  # setup relay p50, join p99, and the probe's p99 after an overload
REDIS_CPU_RATIO_TARGET = 1.6  # two processes + Redis against one, daphne, CPU per relay
RSS_TARGET_KB = 25.0  # per idle connection, one process
# "Bounded" RSS under overload: the peak at most this multiple of the RSS before it.
# Holding the overload's excess in the server would take far more (S2 at 40,000 msg/s for
# 10 s is 400,000 frames of about 300 bytes).
OVERLOAD_RSS_BOUND = 1.5
RECOVERY_TARGET_SECS = 5.0  # the probe's p99 back under 50 ms after the load ended
TARGET_SERVERS = ("uvicorn", "daphne")

OPS: dict[str, Callable[[float, float], bool]] = {
    "≤": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
    "≥": lambda a, b: a >= b,
    "=": lambda a, b: a == b,
}


@dataclasses.dataclass
class TargetRow:
    """One target: the project's figure, the reference's (ref-node's in the same run; for
    the Redis target, one process's), their ratio, and whether the target is met. The
    limit applies to the figure, to the ratio (``on_ratio``), or to ``checked`` (a value
    derived from the row, described by ``checked_as``)."""

    target: int
    what: str
    server: str
    processes: int
    framing: str
    scenario: str
    figure: float | None
    reference_figure: float | None
    op: str
    limit: float
    unit: str = ""
    on_ratio: bool = False
    checked: float | None = None
    checked_as: str = ""  # e.g. "peak / before"
    reference: str = REF_NODE
    figure_text: str | None = None
    reference_text: str | None = None
    missing_fails: bool = False  # a missing figure is a failure (no rate held, no recovery)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.figure is None or not self.reference_figure:
            return None
        return round(self.figure / self.reference_figure, 2)

    @property
    def met(self) -> bool | None:
        value = self.ratio if self.on_ratio else (self.checked if self.checked_as else self.figure)
        if value is None:
            return False if self.missing_fails else None
        return OPS[self.op](value, self.limit)

    @property
    def criterion(self) -> str:
        if self.on_ratio:
            return f"{self.op} {self.limit:,g}x {self.reference}"
        if self.checked_as:
            return f"{self.checked_as} {self.op} {self.limit:,g}"
        return f"{self.op} {self.limit:,g}{' ' + self.unit if self.unit else ''}"

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "what": self.what,
            "server": self.server,
            "processes": self.processes,
            "framing": self.framing,
            "scenario": self.scenario,
            "figure": self.figure,
            "unit": self.unit,
            "reference": self.reference,
            "reference_figure": self.reference_figure,
            "ratio": self.ratio,
            "criterion": self.criterion,
            "checked": None if self.checked is None else round(self.checked, 3),
            "met": self.met,
            "notes": self.notes,
        }


def row_notes(row: dict | None, label: str = "") -> list[str]:
    """What makes a run's figures missing or suspect."""
    prefix = f"{label}: " if label else ""
    if row is None:
        return [f"{prefix}not run"]
    notes = []
    if row.get("problem"):
        notes.append(f"{prefix}{str(row['problem'])[:60]}")
    if row.get("servers_died"):
        notes.append(f"{prefix}server died")
    spoilt = {"undelivered": row.get("undelivered"), "misdelivered": row.get("misdelivered"),
              "duplicated": row.get("duplicates")}  # fmt: skip
    notes += [f"{prefix}{fmt(n)} {what}" for what, n in spoilt.items() if n]
    if (row.get("foreign_cpu_cores") or 0) > FOREIGN_LOAD_WARNING:
        notes.append(f"{prefix}other load {row['foreign_cpu_cores']:.2f} cores")
    return notes


def held_rate(row: dict | None) -> float | None:
    """The highest rate held; 0 when the search ran and no rate held."""
    if row is None or "max_rate_held" not in row:
        return None
    return row["max_rate_held"] or 0


def closed_count(row: dict | None) -> int | None:
    """Connections closed by the server during the overload and the probe, or found
    closed after them."""
    if row is None or row.get("overload_closes") is None:
        return None
    return max(row["overload_closes"], row.get("overload_connections_closed") or 0)


def build_targets(rows: list[dict], catalogue: dict[str, Scenario]) -> list[TargetRow]:
    """The targets report of a --targets run, from its rows (TARGET_CONFIGS)."""

    def find(server: str, framing: str, scenario: str, processes: int = 1) -> dict | None:
        key = (server, framing, scenario, processes)
        return next((r for r in rows if (r["server"], r["framing"], r["scenario"], r["processes"]) == key), None)

    def get(row: dict | None, key: str) -> Any:
        return None if row is None else row.get(key)

    ref = {name: find(REF_NODE, "socketio", name) for name in ("S1", "S2", "idle", "overload")}
    out: list[TargetRow] = []

    def add(
        row: dict | None,
        reference_row: dict | None,
        key: str | None = None,
        /,
        reference_label: str = REF_NODE,
        **fields: Any,
    ) -> TargetRow:
        """One target row; ``key``: the figure (of the row and of the reference row)."""
        if key is not None:
            fields |= {"figure": get(row, key), "reference_figure": get(reference_row, key)}
        fields.setdefault("processes", 1)
        fields.setdefault("framing", "native")
        target = TargetRow(**fields)
        target.notes = row_notes(row) + row_notes(reference_row, reference_label) + target.notes
        out.append(target)
        return target

    # 1, 2: CPU per 1k relays against ref-node's, setup and steady, S1 and S2.
    for number, framing in ((1, "native"), (2, "socketio")):
        for server in TARGET_SERVERS:
            for name in ("S1", "S2"):
                row = find(server, framing, name)
                for phase in ("setup", "steady"):
                    target = add(
                        row,
                        ref[name],
                        f"{phase}_server_cpu_ms_per_1k",
                        target=number,
                        what=f"{phase} CPU ms / 1k relays",
                        server=server,
                        framing=framing,
                        scenario=name,
                        op="≤",
                        limit=CPU_RATIO_TARGETS[(framing, server)],
                        on_ratio=True,
                    )
                    if phase == "steady" and get(row, "generator_saturated"):
                        target.notes.append("generator saturated")

    # 3: the highest S2 rate held on one process (every message delivered, p99 under
    # 50 ms), and the setup relays' p50.
    for server in TARGET_SERVERS:
        row = find(server, "native", "S2")
        target = add(
            row,
            ref["S2"],
            target=3,
            what="steady rate held, msg/s (all delivered, p99 < 50 ms)",
            server=server,
            scenario="S2",
            figure=held_rate(row),
            reference_figure=held_rate(ref["S2"]),
            op="≥",
            limit=HELD_RATE_TARGETS[server],
            unit="msg/s",
            figure_text=held_text(row) if row else None,
            reference_text=held_text(ref["S2"]) if ref["S2"] else None,
        )
        if row is not None and row.get("bisect_range") and held_rate(row) == row["bisect_range"][1]:
            target.notes.append("every step held: the search range is the limit")
    for server in TARGET_SERVERS:
        for name in ("S1", "S2"):
            add(
                find(server, "native", name),
                ref[name],
                "setup_relay_p50_ms",
                target=3,
                what="setup relay p50, ms",
                server=server,
                scenario=name,
                op="<",
                limit=LATENCY_TARGET_MS,
                unit="ms",
            )

    # 4: two processes with Redis against one (daphne): CPU per relay at the rate held,
    # Redis's included.
    for name in ("S1", "S2"):
        one, two = find("daphne", "native", name), find("daphne", "native", name, processes=2)
        cpu_two = figure_text = reference_text = None
        if two is not None and two.get("held_server_cpu_ms_per_1k") is not None:
            server_cpu, redis_cpu = two["held_server_cpu_ms_per_1k"], two.get("held_redis_cpu_ms_per_1k") or 0
            cpu_two = round(server_cpu + redis_cpu, 1)
            rate = fmt(two["max_rate_held"])
            figure_text = f"{fmt(cpu_two)} ({fmt(server_cpu)} + Redis {fmt(redis_cpu)}; at {rate} msg/s)"
        if one is not None and one.get("held_server_cpu_ms_per_1k") is not None:
            rate = fmt(one["max_rate_held"])
            reference_text = f"daphne x1: {fmt(one['held_server_cpu_ms_per_1k'])} (at {rate} msg/s)"
        add(
            two,
            one,
            reference_label="daphne x1",
            target=4,
            what="CPU ms / 1k relays at the rate held (Redis's included)",
            server="daphne",
            processes=2,
            scenario=name,
            figure=cpu_two,
            reference_figure=get(one, "held_server_cpu_ms_per_1k"),
            op="≤",
            limit=REDIS_CPU_RATIO_TARGET,
            on_ratio=True,
            reference="daphne x1",
            figure_text=figure_text,
            reference_text=reference_text,
        )

    # 5: RSS per idle connection, one process.
    for server in TARGET_SERVERS:
        row = find(server, "native", "idle")
        connections = get(row, "connections") or catalogue["idle"].idle_connections
        add(
            row,
            ref["idle"],
            "rss_per_connection_kb",
            target=5,
            what=f"idle: RSS KB / connection ({fmt(connections)} connections)",
            server=server,
            scenario="idle",
            op="≤",
            limit=RSS_TARGET_KB,
            unit="KB",
        )

    # 6: join p99 at 100 joins/s.
    for server in TARGET_SERVERS:
        for name in ("S1", "S2"):
            add(
                find(server, "native", name),
                ref[name],
                "join_p99_ms",
                target=6,
                what="join p99, ms, at 100 joins/s",
                server=server,
                scenario=name,
                op="<",
                limit=LATENCY_TARGET_MS,
                unit="ms",
            )

    # 7: the overload, and the probe after it.
    reference = ref["overload"]
    for server in TARGET_SERVERS:
        row = find(server, "native", "overload")
        overload_rate = get(row, "overload_rate") or catalogue["overload"].rate
        label = f"overload, {fmt(overload_rate)} msg/s for {fmt(get(row, 'overload_secs'))} s"
        common: dict[str, Any] = {"target": 7, "server": server, "scenario": "overload"}

        def lost_text(r: dict | None) -> str | None:
            if r is None or r.get("overload_lost") is None:
                return None
            return f"{fmt(r['overload_lost'])} of {fmt(r['overload_sent'])}"

        add(
            row,
            reference,
            "overload_lost",
            **common,
            what=f"{label}: messages lost",
            op="=",
            limit=0,
            figure_text=lost_text(row),
            reference_text=lost_text(reference),
            notes=["generator saturated"] if get(row, "overload_generator_saturated") else [],
        )
        add(
            row,
            reference,
            **common,
            what=f"{label}: connections closed",
            figure=closed_count(row),
            reference_figure=closed_count(reference),
            op="=",
            limit=0,
        )

        def rss_text(r: dict | None) -> str | None:
            peak, before = get(r, "overload_rss_peak_kb"), get(r, "overload_rss_before_kb")
            return None if peak is None or not before else f"{mb(peak)} (before {mb(before)}: {peak / before:.2f}x)"

        def peak_mb(r: dict | None) -> float | None:
            peak = get(r, "overload_rss_peak_kb")
            return None if peak is None else round(peak / 1024, 1)

        peak, before = get(row, "overload_rss_peak_kb"), get(row, "overload_rss_before_kb")
        add(
            row,
            reference,
            **common,
            what=f"{label}: server RSS peak, MB",
            figure=peak_mb(row),
            reference_figure=peak_mb(reference),
            op="≤",
            limit=OVERLOAD_RSS_BOUND,
            unit="MB",
            checked=peak / before if peak is not None and before else None,
            checked_as="peak / before",
            figure_text=rss_text(row),
            reference_text=rss_text(reference),
        )
        add(
            row,
            reference,
            "recovery_secs",
            **common,
            what=f"{label}: relay p99 < 50 ms again after, s",
            op="≤",
            limit=RECOVERY_TARGET_SECS,
            unit="s",
            # no recovery within the probe is a failure, not a missing figure
            missing_fails=row is not None and row.get("probe_secs") is not None,
            figure_text=recovery_text(row) if row else None,
            reference_text=recovery_text(reference) if reference else None,
        )
    return out


def met_text(met: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "not measured"}[met]


TARGET_COLUMNS: list[tuple[str, Callable[[TargetRow], str]]] = [
    ("#", lambda t: str(t.target)),
    ("target", lambda t: t.what),
    ("server", lambda t: f"{t.server}{f' x{t.processes}' if t.processes > 1 else ''}, {t.framing}"),
    ("scen.", lambda t: t.scenario),
    ("figure", lambda t: t.figure_text or fmt(t.figure)),
    ("ref-node, same run", lambda t: t.reference_text or fmt(t.reference_figure)),
    ("ratio", lambda t: "—" if t.ratio is None else f"{t.ratio:.2f}x"),
    ("target", lambda t: t.criterion),
    ("met", lambda t: met_text(t.met)),
    ("notes", lambda t: "; ".join(t.notes)),
]


def targets_table(targets: list[TargetRow]) -> str:
    lines = ["| " + " | ".join(name for name, _ in TARGET_COLUMNS) + " |", "|" + "---|" * len(TARGET_COLUMNS)]
    lines += ["| " + " | ".join(cell(t) for _, cell in TARGET_COLUMNS) + " |" for t in targets]
    return "\n".join(lines)


def targets_json(targets: list[TargetRow], quick: bool) -> str:
    verdicts = [t.met for t in targets]
    summary = {"met": verdicts.count(True), "not_met": verdicts.count(False), "not_measured": verdicts.count(None)}
    return json.dumps({"targets": [t.as_json() for t in targets], "quick": quick, **summary}, ensure_ascii=False)


# ---------------------------------------------------------------- command line


def interrupt(signum: int, frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C, so that every process started is stopped."""
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument(
        "--server",
        default="daphne",
        help="comma-separated: daphne, uvicorn, granian, mock, ref-node (default daphne)\n"
        "mock: bench/mock_server.mjs, a bare relay in Node, to measure the generator itself\n"
        "ref-node: the implementation of --ref-node alone",
    )
    parser.add_argument(
        "--framing",
        default="native",
        help="comma-separated: the project's endpoints to drive, native (/ws/calls/) and socketio\n"
        "(/socket.io/, Engine.IO v4 / Socket.IO v5 over a websocket); default native.\n"
        "ref-node always speaks socketio, the mock native",
    )
    parser.add_argument(
        "--ref-node",
        type=Path,
        metavar="DIR",
        help="a directory with server.js, a Node + Socket.IO implementation of the protocol\n"
        "(PORT, JWT_SECRET; dependencies from bench/package.json): it runs in the same\n"
        "invocation, and every figure is also given as a ratio to its own\n"
        "(with --targets: default $REF_NODE_DIR)",
    )
    parser.add_argument("--processes", type=int, default=1, help="N > 1: N processes sharing a fresh redis-server")
    parser.add_argument("--scenarios", default="S1,S2", help="comma-separated: S1, S2, idle, overload")
    parser.add_argument("--matrix", action="store_true", help="the reference set of docs/benchmarks.md")
    parser.add_argument(
        "--targets",
        action="store_true",
        help="what the performance targets need, beside ref-node (--ref-node or $REF_NODE_DIR),\n"
        "ending with the targets report (a table and one JSON line)",
    )
    parser.add_argument("--quick", action="store_true", help="small rooms and rates, no bisection: a smoke run")
    parser.add_argument("--rate", type=int, help="steady rate (msg/s) instead of the scenario's")
    parser.add_argument("--duration", type=float, help="seconds of steady phase (default 10; quick 2)")
    parser.add_argument("--join-rate", type=float, default=100.0, help="joins per second in setup")
    parser.add_argument("--no-bisect", action="store_true", help="skip the search for the highest steady rate")
    parser.add_argument("--bisect-range", default="250:40000", help="LO:HI msg/s (default 250:40000)")
    parser.add_argument("--step-secs", type=float, default=5.0, help="steady seconds per bisection step")
    parser.add_argument("--p99-limit-ms", type=float, default=50.0, help="relay p99 a held rate must stay under")
    parser.add_argument("--idle-connections", type=int, help="connections of the idle scenario (default 10,000)")
    parser.add_argument("--idle-rooms-of", type=int, default=0, help="idle: then join rooms of this size")
    parser.add_argument("--deflate", action="store_true", help="clients offer permessage-deflate, as browsers do")
    parser.add_argument("--quiet", action="store_true", help="no progress lines from the generator")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECS", help="wait for an idle machine")
    parser.add_argument("--keep-workdir", action="store_true", help="keep server logs and the database")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios.split(",")) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}: use {', '.join(SCENARIOS)}")
    if args.targets:
        # The targets fix the configurations, the scenarios and their parameters.
        fixed = ["server", "processes", "framing", "scenarios", "matrix", "rate", "duration", "join_rate",
                 "no_bisect", "p99_limit_ms", "idle_connections", "idle_rooms_of", "deflate"]  # fmt: skip
        given = [name for name in fixed if getattr(args, name) != parser.get_default(name)]
        if given:
            parser.error(f"--targets runs its own configurations: drop --{', --'.join(given).replace('_', '-')}")
        if args.ref_node is None and os.environ.get("REF_NODE_DIR"):
            args.ref_node = Path(os.environ["REF_NODE_DIR"])
        if args.ref_node is None:
            parser.error("--targets needs ref-node: --ref-node DIR, or REF_NODE_DIR in the environment")
        if args.quick:
            # A smoke run of the targets: a short search, so that its figures are exercised too.
            if args.bisect_range == parser.get_default("bisect_range"):
                args.bisect_range = QUICK_TARGETS_BISECT
            if args.step_secs == parser.get_default("step_secs"):
                args.step_secs = QUICK_TARGETS_STEP_SECS
    unknown = set(args.server.split(",")) - set(SERVER_KINDS)
    if unknown:
        parser.error(f"unknown server(s) {', '.join(sorted(unknown))}: use {', '.join(SERVER_KINDS)}")
    unknown = set(args.framing.split(",")) - set(FRAMINGS)
    if unknown:
        parser.error(f"unknown framing(s) {', '.join(sorted(unknown))}: use {', '.join(FRAMINGS)}")
    if args.ref_node is None and (REF_NODE in args.server.split(",")):
        parser.error("--server ref-node needs --ref-node DIR")
    if args.ref_node is not None and not (args.ref_node / "server.js").is_file():
        parser.error(f"--ref-node {args.ref_node}: no server.js there")
    return args


def plan_configs(args: argparse.Namespace) -> list[Config]:
    """The configurations of an invocation, in order; ref-node, when given, last, on the
    scenarios of all the others."""
    if args.targets:
        return list(TARGET_CONFIGS)
    framings = list(dict.fromkeys(args.framing.split(",")))
    if args.matrix:
        kinds = [(kind, n, tuple(names)) for kind, n, names in MATRIX]
    else:
        scenarios = tuple(dict.fromkeys(args.scenarios.split(",")))
        kinds = [(kind, args.processes, scenarios) for kind in dict.fromkeys(args.server.split(","))]
    configs: list[Config] = []
    for kind, processes, names in kinds:
        if kind == REF_NODE:
            continue
        for framing in ["native"] if kind == "mock" else framings:
            configs.append(Config(kind, processes, framing, names))
    if args.ref_node is not None:
        names = tuple(dict.fromkeys(n for c in configs for n in c.scenarios)) or tuple(args.scenarios.split(","))
        configs.append(Config(REF_NODE, 1, "socketio", names))
    return configs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    catalogue = QUICK if args.quick else SCENARIOS
    lo, _, hi = args.bisect_range.partition(":")
    # --quick runs no bisection, except for the targets (a short one, see parse_args)
    bisect = None if (args.no_bisect or (args.quick and not args.targets)) else (int(lo), int(hi))
    options = Options(
        duration=args.duration if args.duration is not None else (2.0 if args.quick else 10.0),
        join_rate=args.join_rate,
        bisect=bisect,
        step_secs=args.step_secs,
        p99_limit_ms=args.p99_limit_ms,
        deflate=args.deflate,
        quiet=args.quiet,
        rate=args.rate,
        idle_rooms_of=args.idle_rooms_of,
    )
    plan = plan_configs(args)

    def scenario(name: str) -> Scenario:
        chosen = catalogue[name]
        if name == "idle" and args.idle_connections:
            chosen = dataclasses.replace(chosen, idle_connections=args.idle_connections)
        return chosen

    signal.signal(signal.SIGTERM, interrupt)
    open_files = raise_open_files_limit()
    ensure_node_deps()
    needed = max(scenario(name).clients for config in plan for name in config.scenarios)
    needed += 2 * max(config.processes for config in plan)  # warm-up clients
    if needed + 100 > open_files:
        raise SystemExit(f"bench: {needed} connections need more open files than the limit of {open_files}.")

    print(f"machine: {json.dumps(machine())}")
    print(f"versions: {json.dumps(versions())}")
    print(
        f"note: CALLS_RATE_LIMIT and CALLS_RATE_BURST are raised to {RATE_LIMIT} for the generator's clients "
        "(S2 at 20,000 msg/s is 100 frames/s per client, the default limit; bisection goes higher).",
        flush=True,
    )
    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="calls-bench-"))
    try:
        env = server_env(workdir / "db.sqlite3", **BENCH_ENV)
        prepare_database(env)
        tokens = mint_tokens(env, needed, workdir / "tokens.json")
        credentials = Credentials(tokens)
        if args.ref_node is not None:
            secret = secrets.token_urlsafe(32)
            ref_tokens = mint_ref_node_tokens(tokens, secret, workdir / "tokens-ref-node.json")
            credentials = Credentials(tokens, ref_tokens, secret, args.ref_node.resolve())
        for config in plan:
            kind, processes = config.kind, config.processes
            for name in config.scenarios:
                chosen = scenario(name)
                cores = Cores.plan(processes, with_redis=processes > 1)
                print(f"== {kind}, {processes} process(es), {config.framing}, {name} — {cores.note}", flush=True)
                if args.wait_quiet:
                    print(f"   machine load before the run: {wait_for_quiet(args.wait_quiet):.2f} cores", flush=True)
                try:
                    row = run_one(config, chosen, options, workdir, credentials)
                except (RuntimeError, subprocess.SubprocessError) as exc:
                    print(f"bench: {kind} {processes} {config.framing} {name} failed: {exc}", file=sys.stderr)
                    row = {"server": kind, "processes": processes, "framing": config.framing, "scenario": name,
                           "problem": str(exc)[:500]}  # fmt: skip
                rows.append(row)
                print(f"   {progress(row)}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_workdir:
            print(f"workdir kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if rows:
            add_ratios(rows)
            print()
            print(table(rows))
            print()
            for row in rows:
                print(json.dumps(row))
            if args.targets:
                print()
                title = "Targets" + (" (--quick: small scenarios and steps, not a measurement)" if args.quick else "")
                print(f"{title}: ref-node measured in this run; server CPU on its core, the generator on another.")
                print()
                targets = build_targets(rows, catalogue)
                print(targets_table(targets))
                print()
                print(targets_json(targets, args.quick))
    failed = [r for r in rows if r.get("problem") or r.get("misdelivered") or r.get("duplicates")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
