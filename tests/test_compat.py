"""Tests that the daphne adjustments are made under daphne only, and that a release they
were not written for stops the process at start with a sentence saying so."""

from __future__ import annotations

import json
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from calls import compat
from tests.compat_probe import current
from tests.servers import prepare_database, server_env, start_servers

PROBE = "tests.compat_probe:application"

COMMANDS: dict[str, Callable[[int], list[str]]] = {
    "daphne": lambda port: [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), PROBE],
    "uvicorn": lambda port: [sys.executable, "-m", "uvicorn", PROBE, "--host", "127.0.0.1", "--port", str(port),
                             "--ws", "websockets-sansio", "--loop", "uvloop", "--log-level", "warning"],
}  # fmt: skip


def probe(kind: str, workdir: Path) -> dict:
    env = server_env(workdir / "db.sqlite3")
    prepare_database(env)
    command = COMMANDS[kind]
    [server] = start_servers(lambda index, port: command(port), env, [workdir / f"{kind}.log"])
    try:
        with urllib.request.urlopen(f"{server.http}/compat-probe", timeout=10) as response:
            return json.loads(response.read())
    finally:
        server.stop()


def test_nothing_of_daphne_is_replaced_under_uvicorn(tmp_path: Path) -> None:
    assert probe("uvicorn", tmp_path) == {"adjusted": False, "replaced": []}


def test_daphne_serving_is_adjusted(tmp_path: Path) -> None:
    assert probe("daphne", tmp_path) == {"adjusted": True, "replaced": sorted(current())}


def test_management_commands_do_not_adjust_daphne() -> None:
    """daphne in INSTALLED_APPS imports daphne.server; that alone must not count."""
    assert "daphne.server" in sys.modules
    assert not compat.daphne_is_the_server()


def test_the_pinned_releases_pass() -> None:
    compat.check_daphne_stack(dict(compat.WRITTEN_FOR))


@pytest.mark.parametrize("library", sorted(compat.WRITTEN_FOR))
def test_another_release_refuses_to_start(library: str) -> None:
    installed = dict(compat.WRITTEN_FOR, **{library: "99.0.0"})
    with pytest.raises(ImproperlyConfigured, match=rf"{library} 99\.0\.0 \(expected {compat.WRITTEN_FOR[library]}\)"):
        compat.check_daphne_stack(installed)


def test_a_missing_attribute_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from daphne.server import Server

    monkeypatch.delattr(Server, "handle_reply")
    with pytest.raises(ImproperlyConfigured, match=r"Server\.handle_reply no longer exist"):
        compat.check_daphne_stack(dict(compat.WRITTEN_FOR))


def test_deferred_highlighting_writes_what_autobahn_would() -> None:
    """The lazy ``hltype``/``hlval`` give autobahn's own text once a debug line is written."""
    from autobahn.util import hltype, hlval

    from calls.compat import _lazy

    assert str(_lazy(hltype)(test_deferred_highlighting_writes_what_autobahn_would)) == hltype(
        test_deferred_highlighting_writes_what_autobahn_would
    )
    assert (
        "{}, {:>3}".format(_lazy(hlval)(42), _lazy(hlval)(7, color="red")) == f"{hlval(42)}, {hlval(7, color='red'):>3}"
    )


async def test_a_send_once_the_clients_close_has_begun_is_dropped_as_after_the_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Between a client's close frame and the end of the connection, autobahn raises on a
    # send (a writer in the middle of a relay then died with a traceback); daphne itself
    # drops a send once the connection is gone.
    from autobahn.exception import Disconnected
    from daphne.server import Server
    from daphne.ws_protocol import WebSocketProtocol

    for owner, name in ((Server, "handle_reply"), (WebSocketProtocol, "onOpen"), (WebSocketProtocol, "onMessage")):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back after the test
    original = Server.handle_reply
    compat._add_flow_control()
    protocol = WebSocketProtocol()
    protocol.state, protocol.client_addr = WebSocketProtocol.STATE_CLOSING, ["127.0.0.1", 50000]
    protocol.calls_write_flow = compat._WriteFlow()
    server = Server.__new__(Server)
    server.connections = {protocol: {}}
    message = {"type": "websocket.send", "text": "42[]"}
    with pytest.raises(Disconnected):
        await original(server, protocol, message)

    await Server.handle_reply(server, protocol, message)  # nothing raised, nothing sent
