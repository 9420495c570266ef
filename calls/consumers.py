"""The native websocket transport (docs/protocol.md §1): one JSON object per text frame.

A thin consumer: each frame goes to its ``calls.session.SignalingSession`` (limits,
parsing with ``calls.protocol``, the rules of ``calls.services``), and what comes back is
sent. It holds no rule of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from calls import delivery, process, protocol
from calls.auth.websocket import AUTH_EXPIRES_AT, AUTH_THROTTLED
from calls.protocol import NATIVE, CloseCode
from calls.session import SignalingSession, open_session, refusal

logger = logging.getLogger("calls")


# What a server reports for a websocket lost without a close frame (RFC 6455 §7.1.5).
ABNORMAL_CLOSURE = 1006


class CallConsumer(AsyncJsonWebsocketConsumer):
    session: SignalingSession | None = None
    closing = False  # set once either side closed: nothing more may be sent
    close_code: int | None = None  # the code this side closed with
    ending: asyncio.Task | None = None  # the session's end, once begun

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' consumer loop, with the connection's mailbox (``calls.delivery``)
        in place of a channel-layer channel: this task handles the client's messages, a
        second one sends what the rules address to the connection. ``turn`` lets one of
        them at a time at the socket, so that, as in Channels, the reply to a frame goes
        out before anything that arrived while it was handled. Channels' own loop made a
        task per message and read a channel per connection; an earlier version of this
        one passed every client frame through the mailbox too (docs/benchmarks.md has
        the figures).
        """
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.mailbox = delivery.Mailbox()
        self.turn = asyncio.Lock()
        writer = asyncio.get_running_loop().create_task(self._write_mailbox())
        try:
            while True:
                message = await receive()
                async with self.turn:
                    if message["type"] == "websocket.receive":  # a frame: straight in, without a dispatch
                        await self.receive(message.get("text"), message.get("bytes"))
                    else:
                        await self.dispatch(message)
                # receive() does not suspend while daphne holds queued frames: yield, or
                # a flood would be handled in one go while its recipients' mailboxes,
                # whose writers never ran, overflowed.
                await asyncio.sleep(0)
        except StopConsumer:
            pass
        finally:
            writer.cancel()

    async def _write_mailbox(self) -> None:
        """Send the mailbox's frames in order; close when it holds a close code. Once the
        socket is closed, what is left stays in the mailbox: a parked participant gets
        it when it resumes."""
        while True:
            await self.mailbox.wait()
            async with self.turn:
                if self.closing:
                    return
                item = self.mailbox.take()
                if isinstance(item, int):
                    await self.close(code=item)
                    if item == CloseCode.GOING_AWAY:
                        self._end_session("code=1001 from the server", lost=True)
                elif item is not None:
                    try:
                        await self.base_send({"type": "websocket.send", "text": item.text(NATIVE)})
                    except OSError:  # uvicorn: the client has gone, its disconnect is on its way
                        self.mailbox.put_back([item])
                        return

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called for every message from the socket.

        Channels' own dispatch first closes stale database connections, a hop to a
        thread and back for every frame, about as much as the rest of a relay. This
        consumer touches the database only through ``database_sync_to_async``, which
        does the same cleanup in its own thread.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        """Called on the handshake: accept, then close at once unless authenticated
        (4401), or if the client's address failed authentication too often (4429)."""
        await self.accept()
        user = self.scope["user"]
        code = refusal(user, throttled=bool(self.scope.get(AUTH_THROTTLED)))
        if code is not None:
            await self.close(code=code)
            return
        query = parse_qs(self.scope.get("query_string", b"").decode("latin1"))
        resume_token = query["resume"][0] if query.get("resume") else None
        opened = await open_session(self.mailbox, user, self.scope.get(AUTH_EXPIRES_AT), resume_token)
        if isinstance(opened, int):
            await self.close(code=opened)
            return
        self.session = opened
        for event in opened.greeting:
            await self.send(text_data=event.text(NATIVE))
        logger.info("connect %s", opened.caller.log_context())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for each client frame; every failure is answered to this client only."""
        session = self.session
        if session is None or self.closing:
            return  # unauthenticated, or closed for flooding: no event is handled
        outcome = await session.handle(text_data, protocol.parse_frame)
        if isinstance(outcome, int):
            await self.close(code=outcome)
        elif outcome is not None:
            await self.base_send({"type": "websocket.send", "text": outcome.text(NATIVE)})

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close from the server end. Frames still in the mailbox are then not sent:
        servers refuse a send after the close (uvicorn raises, killing the consumer
        before it could leave its room); a park takes them."""
        self.closing = True
        self.close_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        await super().close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, whoever closed it: leave the room, or be parked
        for a resume when it was lost without a close frame or this side closed it with
        1001 (docs/protocol.md §5 rule 4)."""
        self.closing = True
        self._end_session(f"code={code}", lost=code == ABNORMAL_CLOSURE or self.close_code == CloseCode.GOING_AWAY)
        if self.ending is not None:
            await self.ending

    def _end_session(self, how: str, *, lost: bool) -> None:
        """The session ends, once: it leaves its room or is parked. After a 1001 of its
        own this side does not wait for the client's close frame (a connection taken over
        by a resume may be dead), and a task of the process does it, so that the end of
        this consumer cannot cut it short."""
        session, self.session = self.session, None
        if session is not None:
            self.ending = process.current().spawn(session.closed(how, lost=lost))
