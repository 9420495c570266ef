"""What every transport does around the rules for one connection, in one place.

A transport (the native websocket of ``calls/consumers.py``, the Socket.IO endpoint of
``calls/socketio/``) authenticates a connection, opens it here, and hands each frame the
client sends to ``SignalingSession.handle`` with its own parser; it frames what comes
back in its own wire format. Everything else is here: the refusals and their metrics,
the frame size limit, the rate limit, the check order of docs/protocol.md §3, the error
reply, the sampled error log (§5 rule 10) and ``internal-error`` for a failure of the
server, so that no transport can get one of them wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings

from calls import delivery, host, metrics, protocol, services
from calls.limits import FrameLimiter, Verdict
from calls.protocol import CloseCode, ErrorCode, Outgoing, ParsedRequest, SignalingError

logger = logging.getLogger("calls")

RATE_LIMITED = "Too many frames; slow down."
NOT_TEXT = "Frames must be text, not binary."
SERVER_FAILED = "The server failed; try again."

Parser = Callable[[str], ParsedRequest]


def refusal(user: Any, *, throttled: bool) -> int | None:
    """Called once a connection's authentication is known: the close code that refuses
    it (4429 for an address with too many failures, 4401 without an active user),
    counted in the metrics; ``None`` when it may go on."""
    if throttled:
        code = CloseCode.FLOODING
    elif user is None or not user.is_authenticated:
        code = CloseCode.UNAUTHENTICATED
    else:
        return None
    metrics.AUTH_REFUSED.labels(code).inc()
    return code


async def open_session(
    mailbox: delivery.Mailbox, user: Any, auth_expires_at: float | None, resume_token: str | None = None
) -> SignalingSession | int:
    """Called for an authenticated connection (``resume_token``: the one it presents to
    resume, docs/protocol.md §6): its session, whose caller reads ``mailbox`` for what the
    rules address to it, and whose ``greeting`` the transport sends first; or 4409 when
    the user holds too many connections."""
    opened = await services.connection_opened(
        mailbox,
        user_id=str(user.pk),
        username=user.get_username(),
        display_name=host.display_name(user),
        is_staff=host.is_staff(user),
        auth_expires_at=auth_expires_at,
        resume_token=resume_token,
    )
    if opened is None:
        metrics.AUTH_REFUSED.labels(CloseCode.TOO_MANY_CONNECTIONS).inc()
        logger.info("refused: too many connections userId=%s", user.pk)
        return CloseCode.TOO_MANY_CONNECTIONS
    caller, greeting = opened
    return SignalingSession(caller, greeting)


def frame_problem(text: str | None, limit: int) -> SignalingError | None:
    """What is wrong with a raw frame (``None``: not text; ``limit``: the largest in
    bytes), before any parsing."""
    if text is None:
        return SignalingError(ErrorCode.INVALID_MESSAGE, NOT_TEXT)
    # Characters are at most 4 bytes, so only long frames need encoding to measure.
    if len(text) * 4 > limit and len(text.encode()) > limit:
        return SignalingError(
            ErrorCode.MESSAGE_TOO_LARGE, f"Frames may be at most {limit} bytes.", details={"maxBytes": limit}
        )
    return None


class SignalingSession:
    """One open, authenticated connection, whatever its transport: its ``Caller`` and its
    flood control."""

    __slots__ = ("caller", "greeting", "limiter", "max_bytes")

    def __init__(self, caller: services.Caller, greeting: list[Outgoing]) -> None:
        self.caller = caller
        self.greeting = greeting  # webrtc:connected, and a resume's outcome
        self.limiter = FrameLimiter(rate=settings.CALLS_RATE_LIMIT, burst=settings.CALLS_RATE_BURST)
        # Read once: a setting costs a lookup through Django's lazy settings on every frame.
        self.max_bytes: int = settings.CALLS_MAX_MESSAGE_BYTES

    async def handle(self, text: str | None, parse: Parser) -> Outgoing | int | None:
        """Called for each frame the client sends (``None`` for a binary one), in order:
        the reply to send back (an error is a reply too), ``None`` when there is none,
        or a close code (4429: the connection floods) after which nothing more is sent."""
        caller = self.caller
        try:
            # Checks in the order of docs/protocol.md §3: frame size and type, rate, content.
            # Every frame takes a token, so that a flood of bad frames is a flood too.
            problem = frame_problem(text, self.max_bytes)
            verdict = self.limiter.admit()
            if verdict is not Verdict.ADMIT:
                metrics.RATE_LIMITED.inc()
                if verdict is Verdict.CLOSE:
                    logger.warning("closing flooding connection %s", caller.log_context())
                    return CloseCode.FLOODING
                if verdict is Verdict.DROP:
                    return None
                problem = problem or SignalingError(ErrorCode.RATE_LIMITED, RATE_LIMITED)
            if problem is not None:
                raise problem
            assert text is not None
            return await services.handle_request(caller, parse(text))
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
            return protocol.error_event(error)
        except Exception:
            metrics.ERRORS.labels(ErrorCode.INTERNAL_ERROR.value).inc()
            logger.exception("internal error %s", caller.log_context())
            return protocol.error_event(SignalingError(ErrorCode.INTERNAL_ERROR, SERVER_FAILED))

    async def closed(self, how: str, *, lost: bool) -> None:
        """Called once when the connection has closed, whoever closed it: it leaves its
        room, or, ``lost`` without a close frame, is parked for a resume."""
        await services.connection_closed(self.caller, lost=lost)
        logger.info("disconnect %s lost=%s %s", how, lost, self.caller.log_context())
