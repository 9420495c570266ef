"""One real daphne process for the end-to-end tests, on a fresh database with the demo
users (alice, bob and carol in "Demo team"; dave in no group)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Server, prepare_database, server_env, start_daphne

PASSWORD = "demo-pass-123"
DEMO_GROUP = "Demo team"


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("e2e")
    env = server_env(tmp / "db.sqlite3")
    prepare_database(env)
    server = start_daphne(env, tmp / "daphne.log")
    try:
        yield server
    finally:
        server.stop()
