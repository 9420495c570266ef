"""Tests that the README's first command, ``make run``, serves a clean copy of the tree:
the page, the API, the admin and the websocket, with ``DEBUG`` unset."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from tests.servers import PROJECT_DIR, free_port

STARTUP_TIMEOUT_SECS = 120.0  # make run migrates and seeds a fresh database first
RECEIVE_TIMEOUT_SECS = 5.0


def copy_of_tree(destination: Path) -> None:
    """What a clone holds: the tracked files and the new ones not ignored (so that a file
    not yet committed is tested too), without the database or any build product."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT_DIR,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        source = PROJECT_DIR / name.decode()
        if not source.is_file():  # deleted in the work tree, not yet in git
            continue
        target = destination / name.decode()
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(source.read_bytes())
        target.chmod(source.stat().st_mode)
    # The virtualenv is the one slow part of a first run, and not what this test is
    # about: the copy uses this checkout's (make still runs its install step).
    (destination / ".venv").symlink_to(PROJECT_DIR / ".venv")


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def make_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``make run`` on a free port in a copy of the tree; yields its base URL."""
    tree = tmp_path_factory.mktemp("clone")
    copy_of_tree(tree)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "DEBUG", "SECRET_KEY", "CALLS_"))}
    env.pop("REDIS_URL", None)
    env.pop("DATABASE_URL", None)
    log_path = tree / "make-run.log"
    with log_path.open("wb") as log:
        # Its own session, so that runserver's autoreloader and its child stop with it.
        process = subprocess.Popen(
            ["make", "run", f"PORT={port}"], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"make run exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                get(f"{base}/healthz")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"make run did not serve:\n{log_path.read_text()[-4000:]}") from None
                time.sleep(0.2)
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        log = log_path.read_text(errors="replace")
        assert "Traceback" not in log, log[-4000:]


def test_health_and_the_call_page_answer(make_run: str) -> None:
    assert get(f"{make_run}/healthz") == (200, b'{"status": "ok"}')
    status, page = get(f"{make_run}/")
    assert status == 200
    assert b"signaling.js" in page or b"call-page.js" in page


def test_the_admin_answers(make_run: str) -> None:
    status, page = get(f"{make_run}/admin/login/")
    assert status == 200
    assert b"Django" in page or b"admin" in page


def demo_token(base: str) -> str:
    request = urllib.request.Request(
        f"{base}/api/auth/token/",
        data=json.dumps({"username": "alice", "password": "demo-pass-123"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["access"]


async def test_a_demo_user_gets_a_token_and_a_websocket(make_run: str) -> None:
    token = await asyncio.to_thread(demo_token, make_run)
    ws_url = make_run.replace("http://", "ws://") + f"/ws/calls/?token={token}"
    async with websockets.connect(ws_url, open_timeout=RECEIVE_TIMEOUT_SECS) as ws:
        frame = json.loads(await ws.recv(RECEIVE_TIMEOUT_SECS))
    assert frame["event"] == "webrtc:connected"
    assert frame["data"]["socketId"]
