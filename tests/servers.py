"""Real server processes for tests: daphne on free loopback ports, stopped even when a
test fails."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

PROJECT_DIR = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_path: Path, *, database_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a production-like process on a shared SQLite file, or on
    ``database_url`` when given (a PostgreSQL database, see ``ServerDatabase``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLS_", "REDIS_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY="server-process-test-secret-key-of-sufficient-length",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=database_url or f"sqlite:///{database_path}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


@dataclass
class ServerDatabase:
    """The database that a test's server processes share: the SQLite file ``path``, or
    the PostgreSQL database ``url`` when set (tests/conftest.py's ``database`` fixture
    gives each test both in turn)."""

    kind: str  # "sqlite" or "postgresql"
    path: Path
    url: str | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return server_env(self.path, database_url=self.url, **extra)

    def rows(self, query: str, *params: object) -> list[tuple]:
        """The rows of ``query``, written with ``?`` placeholders for either database."""
        if self.url is None:
            with closing(sqlite3.connect(self.path, timeout=20)) as db:
                return db.execute(query, params).fetchall()
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as db:
            return db.execute(query.replace("?", "%s"), params).fetchall()


def prepare_database(env: dict[str, str]) -> None:
    """Migrate the database and load the demo users (password ``demo-pass-123``)."""
    for command in (["migrate", "--noinput", "-v0"], ["seed_demo"]):
        subprocess.run([sys.executable, "manage.py", *command], cwd=PROJECT_DIR, env=env, check=True, timeout=120)


@dataclass
class Server:
    port: int
    process: subprocess.Popen
    log_path: Path

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws/calls/"

    def pids(self) -> list[int]:
        """The process and its descendants (granian serves from a worker process it
        spawns), parents first."""
        found = [self.process.pid]
        for pid in found:
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                try:
                    found += [int(child) for child in task.read_text().split()]
                except FileNotFoundError:  # the thread ended meanwhile
                    pass
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def token(self, username: str, password: str = "demo-pass-123") -> str:
        request = urllib.request.Request(
            f"{self.http}/api/auth/token/",
            data=json.dumps({"username": username, "password": password}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["access"]

    def metric(self, sample: str) -> float:
        """A sample of the process's ``/metrics``, e.g. ``calls_x_total{label="v"}``; 0
        if it has none yet."""
        with urllib.request.urlopen(f"{self.http}/metrics", timeout=10) as response:
            text = response.read().decode()
        match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_SECS)


def daphne_command(port: int) -> list[str]:
    return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"]


def uvicorn_command(port: int) -> list[str]:
    """uvicorn as README documents it (the benchmark's second server)."""
    return [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--ws", "websockets-sansio", "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning"]  # fmt: skip


def granian_command(port: int) -> list[str]:
    """granian's ASGI interface, one worker (benchmarked beside daphne and uvicorn)."""
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port),
            "--loop", "uvloop", "--workers", "1", "--log-level", "warning", "config.asgi:application"]  # fmt: skip


SERVER_COMMANDS: dict[str, Callable[[int], list[str]]] = {
    "daphne": daphne_command,
    "uvicorn": uvicorn_command,
    "granian": granian_command,
}


def start_daphnes(env: dict[str, str], log_paths: list[Path]) -> list[Server]:
    """Start one daphne process per log path, in parallel, and wait until all serve."""
    return start_servers(lambda index, port: daphne_command(port), env, log_paths)


def start_servers(command: Callable[[int, int], list[str]], env: dict[str, str], log_paths: list[Path]) -> list[Server]:
    """Start ``command(index, port)`` once per log path on free ports, in parallel, and
    wait until every one serves; if one fails, all are killed."""
    servers: list[Server] = []
    try:
        for index, log_path in enumerate(log_paths):
            port = free_port()
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    command(index, port), cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
                )
            servers.append(Server(port, process, log_path))
        for server in servers:
            wait_until_serving(server)
    except BaseException:
        for server in servers:
            server.stop(signal.SIGKILL)
        raise
    return servers


def wait_until_serving(server: Server) -> None:
    """Return once ``/healthz`` answers 200; raise with the log's tail if the process
    exits or does not answer within ``STARTUP_TIMEOUT_SECS``."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{server.http}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # URLError included: not listening yet
            time.sleep(0.1)
    raise RuntimeError(f"server did not start within {STARTUP_TIMEOUT_SECS:.0f}s:\n{server.log()[-4000:]}")


@contextmanager
def demo_server(
    workdir: Path, kind: str = "daphne", *, database_url: str | None = None, **extra_env: str
) -> Iterator[Server]:
    """One server process (daphne or uvicorn) on a fresh database (SQLite in ``workdir``
    unless ``database_url`` names an empty one) with the demo users; stopped after."""
    env = server_env(workdir / "db.sqlite3", database_url=database_url, **extra_env)
    prepare_database(env)
    command = SERVER_COMMANDS[kind]
    [server] = start_servers(lambda index, port: command(port), env, [workdir / f"{kind}.log"])
    try:
        yield server
    finally:
        server.stop()


def restart_daphne(server: Server, env: dict[str, str], log_path: Path) -> Server:
    """A new daphne process on the port of ``server``, whose process must have exited
    (a rolling restart); returned once it serves."""
    assert server.process.poll() is not None, "the old process still runs"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            daphne_command(server.port), cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    restarted = Server(server.port, process, log_path)
    try:
        wait_until_serving(restarted)
    except BaseException:
        restarted.stop(signal.SIGKILL)
        raise
    return restarted


def metric_sum(servers: list[Server], sample: str) -> float:
    """A ``/metrics`` sample summed over the processes of ``servers`` that still run."""
    return sum(server.metric(sample) for server in servers if server.process.poll() is None)
