"""Real server processes for tests: daphne on free loopback ports, stopped even when a
test fails."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_SECS = 30.0
STOP_TIMEOUT_SECS = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a production-like process on a shared SQLite file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CALLS_", "REDIS_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        SECRET_KEY="server-process-test-secret-key-of-sufficient-length",
        DEBUG="0",
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DATABASE_URL=f"sqlite:///{database_path}",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


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

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(STOP_TIMEOUT_SECS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_SECS)


def start_daphne(env: dict[str, str], log_path: Path) -> Server:
    return start_daphnes(env, [log_path])[0]


def start_daphnes(env: dict[str, str], log_paths: list[Path]) -> list[Server]:
    """Start one daphne process per log path, in parallel, and wait until all serve."""
    servers = []
    for log_path in log_paths:
        port = free_port()
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "config.asgi:application"],
                cwd=PROJECT_DIR,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        servers.append(Server(port, process, log_path))
    try:
        for server in servers:
            _wait_until_serving(server)
    except BaseException:
        for server in servers:
            server.stop(signal.SIGKILL)
        raise
    return servers


def _wait_until_serving(server: Server) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with {server.process.returncode}:\n{server.log()}")
        try:
            urllib.request.urlopen(f"{server.http}/api/auth/me/", timeout=1)
        except urllib.error.HTTPError:
            return  # 401: Django answers
        except OSError:
            time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not start within {STARTUP_TIMEOUT_SECS}s:\n{server.log()}")


@contextmanager
def demo_server(workdir: Path, **extra_env: str) -> Iterator[Server]:
    """One daphne process on a fresh database with the demo users; stopped after."""
    env = server_env(workdir / "db.sqlite3", **extra_env)
    prepare_database(env)
    server = start_daphne(env, workdir / "daphne.log")
    try:
        yield server
    finally:
        server.stop()
