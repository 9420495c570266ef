"""The native websocket transport (PROTOCOL.md §1): one JSON object per text frame.

A thin consumer: check the raw frame, parse it with ``calls.protocol``, apply it with
``calls.services``, send what comes back. It holds no rule of its own.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from calls import protocol, services
from calls.protocol import CloseCode, ErrorCode, Event, SignalingError

logger = logging.getLogger("calls")


class CallConsumer(AsyncJsonWebsocketConsumer):
    caller: services.Caller | None = None

    async def connect(self) -> None:
        """Called on the handshake: accept, then close at once with 4401 unless authenticated."""
        await self.accept()
        user = self.scope["user"]
        if not user.is_authenticated:
            await self.close(code=CloseCode.UNAUTHENTICATED)
            return
        self.caller = services.Caller(
            socket_id=services.new_socket_id(),
            channel_name=self.channel_name,
            user_id=str(user.pk),
            username=user.username,
            display_name=user.shown_name,
        )
        await self.send(
            text_data=protocol.encode_frame(
                Event.CONNECTED, {"socketId": self.caller.socket_id, "userId": self.caller.user_id}
            )
        )
        logger.info("connect %s", self.caller.log_context())

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Called for each client frame; every failure is answered to this client only."""
        caller = self.caller
        if caller is None:
            return  # unauthenticated and being closed: no event is handled
        try:
            if text_data is None:
                raise SignalingError(ErrorCode.INVALID_MESSAGE, "Frames must be text, not binary.")
            # Characters are at most 4 bytes, so only long frames need encoding to measure.
            size = len(text_data) if len(text_data) * 4 <= settings.CALLS_MAX_MESSAGE_BYTES else len(text_data.encode())
            if size > settings.CALLS_MAX_MESSAGE_BYTES:
                raise SignalingError(
                    ErrorCode.MESSAGE_TOO_LARGE,
                    f"Frames may be at most {settings.CALLS_MAX_MESSAGE_BYTES} bytes.",
                    details={"maxBytes": settings.CALLS_MAX_MESSAGE_BYTES},
                )
            reply = await services.handle_request(caller, protocol.parse_frame(text_data))
        except SignalingError as error:
            logger.info(
                "signaling error %s event=%.64r room=%s %s",
                error.code.value,
                error.event,
                error.room_id,
                caller.log_context(),
            )
            reply = protocol.error_frame(error)
        except Exception:
            logger.exception("internal error %s", caller.log_context())
            reply = protocol.error_frame(SignalingError(ErrorCode.INTERNAL_ERROR, "The server failed; try again."))
        if reply is not None:
            await self.send(text_data=reply)

    async def calls_frame(self, message: dict[str, Any]) -> None:
        """Called for a frame that the rules address to this connection."""
        await self.send(text_data=message["text"])

    async def calls_close(self, message: dict[str, Any]) -> None:
        """Called when the server must drop this connection (its process was evicted)."""
        await self.close(code=message["code"])

    async def disconnect(self, code: int) -> None:
        """Called when the socket closes, whoever closed it: leave the room."""
        if self.caller is not None:
            await services.connection_closed(self.caller)
            logger.info("disconnect code=%s %s", code, self.caller.log_context())
