"""The native websocket transport (PROTOCOL.md §1): one JSON object per text frame.

A thin consumer: check the raw frame, parse it with ``calls.protocol``, apply it with
``calls.services``, send what comes back. It holds no rule of its own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from accounts.websocket import AUTH_EXPIRES_AT, AUTH_THROTTLED
from calls import delivery, metrics, protocol, services
from calls.limits import FrameLimiter, Verdict
from calls.protocol import NATIVE, CloseCode, ErrorCode, SignalingError

logger = logging.getLogger("calls")

RATE_LIMITED = "Too many frames; slow down."


class CallConsumer(AsyncJsonWebsocketConsumer):
    caller: services.Caller | None = None
    closing = False  # set once this side closed: nothing more may be sent

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' consumer loop, with the connection's mailbox (``calls.delivery``)
        in place of a channel-layer channel: this task handles the client's messages, a
        second one sends what the rules address to the connection. ``turn`` lets one of
        them at a time at the socket, so that, as in Channels, the reply to a frame goes
        out before anything that arrived while it was handled. Channels' own loop made a
        task per message and read a channel per connection; an earlier version of this
        one passed every client frame through the mailbox too (S1 steady on daphne,
        alternating runs: 153-166 -> 130-147 CPU ms per 1k relays with two tasks).
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
        """Send the mailbox's frames in order; close when it holds a close code."""
        while True:
            item = await self.mailbox.get()
            async with self.turn:
                if type(item) is int:
                    await self.close(code=item)
                elif not self.closing:
                    await self.send(text_data=item.text(NATIVE))

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Called for every message from the socket.

        Channels' own dispatch first closes stale database connections, a hop to a
        thread and back for every frame (150-180 µs of a relay that otherwise costs
        about as much again). This consumer touches the database only through
        ``database_sync_to_async``, which does the same cleanup in its own thread.
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
        if self.scope.get(AUTH_THROTTLED) or not user.is_authenticated:
            code = CloseCode.FLOODING if self.scope.get(AUTH_THROTTLED) else CloseCode.UNAUTHENTICATED
            metrics.AUTH_REFUSED.labels(code).inc()
            await self.close(code=code)
            return
        self.limiter = FrameLimiter(rate=settings.CALLS_RATE_LIMIT, burst=settings.CALLS_RATE_BURST)
        caller = await services.connection_opened(
            self.mailbox,
            user_id=str(user.pk),
            username=user.username,
            display_name=user.shown_name,
            auth_expires_at=self.scope.get(AUTH_EXPIRES_AT),
        )
        if caller is None:
            metrics.AUTH_REFUSED.labels(CloseCode.TOO_MANY_CONNECTIONS).inc()
            logger.info("refused: too many connections userId=%s", user.pk)
            await self.close(code=CloseCode.TOO_MANY_CONNECTIONS)
            return
        self.caller = caller
        await self.send(text_data=services.connected_event(caller).text(NATIVE))
        logger.info("connect %s", caller.log_context())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for each client frame; every failure is answered to this client only."""
        caller = self.caller
        if caller is None or self.closing:
            return  # unauthenticated, or closed for flooding: no event is handled
        try:
            # Checks in the order of PROTOCOL.md §3: frame size and type, rate, content.
            # Every frame takes a token, so that a flood of bad frames is a flood too.
            problem = self._frame_problem(text_data)
            verdict = self.limiter.admit()
            if verdict is not Verdict.ADMIT:
                metrics.RATE_LIMITED.inc()
                if verdict is Verdict.CLOSE:
                    logger.warning("closing flooding connection %s", caller.log_context())
                    await self.close(code=CloseCode.FLOODING)
                    return
                if verdict is Verdict.DROP:
                    return
                problem = problem or SignalingError(ErrorCode.RATE_LIMITED, RATE_LIMITED)
            if problem is not None:
                raise problem
            assert text_data is not None
            reply = await services.handle_request(caller, protocol.parse_frame(text_data))
        except SignalingError as error:
            metrics.ERRORS.labels(error.code.value).inc()
            unlogged = self.limiter.may_log_error()
            if unlogged is not None:
                logger.info(
                    "signaling error %s event=%.64r room=%s %s (%d more since the last line)",
                    error.code.value,
                    error.event,
                    error.room_id,
                    caller.log_context(),
                    unlogged,
                )
            reply = protocol.error_event(error)
        except Exception:
            metrics.ERRORS.labels(ErrorCode.INTERNAL_ERROR.value).inc()
            logger.exception("internal error %s", caller.log_context())
            reply = protocol.error_event(SignalingError(ErrorCode.INTERNAL_ERROR, "The server failed; try again."))
        if reply is not None:
            await self.send(text_data=reply.text(NATIVE))

    @staticmethod
    def _frame_problem(text_data: str | None) -> SignalingError | None:
        """What is wrong with the raw frame, before any parsing."""
        if text_data is None:
            return SignalingError(ErrorCode.INVALID_MESSAGE, "Frames must be text, not binary.")
        limit = settings.CALLS_MAX_MESSAGE_BYTES
        # Characters are at most 4 bytes, so only long frames need encoding to measure.
        if len(text_data) * 4 > limit and len(text_data.encode()) > limit:
            return SignalingError(
                ErrorCode.MESSAGE_TOO_LARGE, f"Frames may be at most {limit} bytes.", details={"maxBytes": limit}
            )
        return None

    async def close(self, code: int | bool | None = None, reason: str | None = None) -> None:
        """Close from the server end. Frames still in the mailbox are then dropped:
        servers refuse a send after the close (uvicorn raises, killing the consumer
        before it could leave its room)."""
        self.closing = True
        await super().close(code=code, reason=reason)

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, whoever closed it: leave the room."""
        if self.caller is not None:
            await services.connection_closed(self.caller)
            logger.info("disconnect code=%s %s", code, self.caller.log_context())
