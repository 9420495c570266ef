"""Adjustments to the servers we run under, each for a rule the contract needs."""

from __future__ import annotations


def allow_going_away_close_under_daphne() -> None:
    """Let daphne close websockets with 1001 (PROTOCOL.md §8: server going away).

    autobahn, under daphne, lets a server close only with 1000 or 3000-4999 and raises
    for 1001, although RFC 6455 §7.4.1 defines 1001 for exactly this; the socket then
    ends with 1011 instead. Other codes keep autobahn's checks.
    """
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not running under daphne
        return
    if getattr(WebSocketProtocol.serverClose, "allows_going_away", False):
        return
    original = WebSocketProtocol.serverClose

    def server_close(self: WebSocketProtocol, code: int | None = None) -> None:
        if code == 1001:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            original(self, code)

    server_close.allows_going_away = True  # type: ignore[attr-defined]
    WebSocketProtocol.serverClose = server_close


class _LazyPformat:
    """``pformat`` that formats only if the text is ever asked for."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        from pprint import pformat

        return pformat(self.value)


def defer_autobahn_debug_formatting() -> None:
    """autobahn (under daphne) pretty-prints its whole configuration for a debug line on
    every websocket connection, logged or not: about 9% of a connection's CPU in a py-spy
    profile of 1,500 connects. Format it only when the line is written."""
    try:
        from autobahn.websocket import protocol
    except ImportError:
        return
    protocol.pformat = _LazyPformat  # type: ignore[assignment]
