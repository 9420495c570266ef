"""One real daphne process for the end-to-end tests, on a fresh database with the demo
users (alice, bob and carol in "Demo team"; dave in no group)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import Server, demo_server

PASSWORD = "demo-pass-123"
DEMO_GROUP = "Demo team"


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with demo_server(tmp_path_factory.mktemp("e2e")) as server:
        yield server
