"""Tests that the benchmark harness (bench/run.py driving bench/loadgen.mjs) still runs
end to end (a quick S1 against one uvicorn process, every message delivered once to its
target), and that the generator notices lost, duplicated, misdelivered and spoofed
messages (against bench/mock_server.mjs, which spoils some on purpose)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.run import LOADGEN, ensure_node_deps, node, server_command
from tests.servers import PROJECT_DIR, Server, start_servers

RUN_TIMEOUT_SECS = 120
ROOMS, SIZE = 5, 4
SETUP_RELAYS = ROOMS * 6 * 18  # 6 pairs per room of 4: offer, answer, 8 candidates each way


def test_a_quick_s1_run_delivers_every_message_to_its_target_only() -> None:
    """Tests that the quick run reports equal sent and delivered counts, nothing
    misdelivered or duplicated, no errors, and a complete setup phase."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--server", "uvicorn", "--processes", "1", "--scenarios", "S1",
         "--quick", "--quiet"],
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECS,
        check=False,
    )  # fmt: skip
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith('{"server"')]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert len(rows) == 1, result.stdout[-3000:]
    row = rows[0]
    assert row["problem"] is None
    assert row["setup_sent"] == row["setup_relays"] == 10 * 6 * 18  # 10 rooms of 4: 6 pairs, 18 relays each
    assert row["steady_sent"] > 0
    assert row["sent"] == row["delivered"]
    assert row["misdelivered"] == 0
    assert row["duplicates"] == 0
    assert row["errors"] == {}
    assert row["join_p99_ms"] is not None
    assert row["setup_server_cpu_ms_per_1k"] > 0


@pytest.fixture
def mock_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """The mock relay, spoiling every 25th relay after setup in the way the test names."""
    ensure_node_deps()
    fault = ["--fault", request.param, "--fault-every", "25", "--fault-after", str(SETUP_RELAYS)]
    [server] = start_servers(
        lambda index, port: server_command("mock", port) + fault, dict(os.environ), [tmp_path / "mock.log"]
    )
    try:
        yield server
    finally:
        server.stop(signal.SIGKILL)


def run_loadgen(server: Server, tmp_path: Path) -> dict:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps(["mock-token"] * (ROOMS * SIZE + 2)))
    result = subprocess.run(
        [node(), str(LOADGEN), "--urls", server.ws, "--tokens", str(tokens), "--rooms", str(ROOMS),
         "--size", str(SIZE), "--rate", "1000", "--duration", "1", "--drain-idle-secs", "0.5", "--deadline", "30",
         "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )  # fmt: skip
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    ("mock_server", "noticed"),
    [
        ("", {}),
        ("drop", {"undelivered": 40}),
        ("duplicate", {"duplicates": 40}),
        ("misdeliver", {"misdelivered": 40, "undelivered": 0}),
        ("spoof", {"misdelivered": 40, "undelivered": 0}),
    ],
    indirect=["mock_server"],
)
def test_the_generator_counts_every_spoiled_message(mock_server: Server, tmp_path: Path, noticed: dict) -> None:
    """Tests that 1,000 steady messages with every 25th spoiled show up as exactly 40
    undelivered, duplicated or misdelivered (a misdelivered one is not also counted as
    undelivered), and that an unspoiled run delivers all of them."""
    report = run_loadgen(mock_server, tmp_path)
    assert report["problem"] is None
    assert report["setup"]["delivered"] == report["setup"]["sent"] == SETUP_RELAYS
    steady = report["steady"]
    assert steady["sent"] == 1000
    expected = {"undelivered": 0, "duplicates": 0, "misdelivered": 0} | noticed
    assert {key: steady[key] for key in expected} == expected
