"""Per-process start-up and graceful shutdown.

Start-up runs once before the first connection is served. Daphne speaks no ASGI
lifespan protocol, so it happens on the first scope of any kind; under a server that
does (uvicorn) it happens at lifespan start-up instead.

Shutdown: on SIGTERM, every connection is closed with 1001 and its participant parked
(docs/protocol.md §5 rule 4: the clients resume on another process, and the rooms see
nothing), within ``CALLS_SHUTDOWN_TIMEOUT_SECS``; then the server's own SIGTERM handling
stops the process. Servers cancel their applications on shutdown without a disconnect
event, so this cannot be left to the consumers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
import threading
import time
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from calls import credentials, history, liveness, services
from calls.presence import get_presence
from calls.presence.base import Presence, PresenceUnavailable
from calls.services import resume, ringing

logger = logging.getLogger("calls")


class ServerLifecycle:
    """ASGI middleware around the whole application."""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.started = False
        self.handle_signals = True
        self._lock: asyncio.Lock | None = None
        self._liveness: asyncio.Task | None = None
        self._sweep: asyncio.Task | None = None
        self._expiry: asyncio.Task | None = None
        self._stopping: asyncio.Task | None = None
        self._shut_down = False

    async def __call__(self, scope: dict, receive: Any, send: Any) -> Any:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if not self.started:
            await self.startup()
        return await self.application(scope, receive, send)

    async def startup(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.started:
                return
            raise_open_file_limit()
            presence = get_presence()
            if presence.shared:
                # Take a lease and clear dead peers' participants before serving anyone,
                # then keep beating.
                await liveness.liveness_tick()
                self._liveness = asyncio.create_task(liveness.liveness_loop())
            await close_orphaned_sessions(presence)
            self._sweep = asyncio.create_task(credentials.sweep_loop())
            self._expiry = asyncio.create_task(timers_loop())
            if self.handle_signals:
                self._install_sigterm_handler()
            self.started = True

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def shutdown(self) -> None:
        """Close every connection of this process and park its participants, then stop beating.
        Once: under uvicorn, the SIGTERM handler's shutdown is followed by the lifespan's."""
        if self._shut_down:
            return
        self._shut_down = True
        await services.shut_down_connections(settings.CALLS_SHUTDOWN_TIMEOUT_SECS)
        for task in (self._liveness, self._sweep, self._expiry):
            if task is not None:
                task.cancel()

    def _install_sigterm_handler(self) -> None:
        """Put graceful shutdown in front of the server's own SIGTERM handling.

        Only the main thread may set signal handlers. daphne and uvicorn run the event
        loop there; ``runserver`` runs it in a thread of its autoreloader, whose parent
        process owns the signals, so a development server stops without the graceful
        path (nothing to hand over there)."""
        if threading.current_thread() is not threading.main_thread():
            logger.info("event loop outside the main thread (runserver): SIGTERM stops the process at once")
            return
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def stop_server() -> None:
            if callable(previous):
                previous(signal.SIGTERM, None)
            else:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)

        async def shut_down_then_stop() -> None:
            try:
                await self.shutdown()
            finally:
                stop_server()

        def on_sigterm() -> None:
            if self._stopping is None:
                logger.info("SIGTERM: closing connections before stopping")
                self._stopping = loop.create_task(shut_down_then_stop())

        signal.signal(signal.SIGTERM, lambda *_: loop.call_soon_threadsafe(on_sigterm))


RELAY_COUNTS_FLUSH_SECS = 10.0  # a killed process's participants lose at most this much of their counts


async def timers_loop() -> None:
    """End what presence says is due, on whichever process gets there first: parked
    participants whose grace is over, rings whose time is up; and now and then write the
    relays counted so far to the history."""
    flushed_at = time.monotonic()
    while True:
        await asyncio.sleep(resume.expiry_interval_secs())
        if time.monotonic() - flushed_at >= RELAY_COUNTS_FLUSH_SECS:
            flushed_at = time.monotonic()
            services.flush_relay_counts()
        for expire in (resume.expire_parked, ringing.expire_rings):
            try:
                await expire()
            except PresenceUnavailable as exc:
                logger.warning("%s skipped, presence unavailable: %s", expire.__name__, exc)
            except Exception:
                logger.exception("%s failed", expire.__name__)


# Every websocket is a file descriptor; below this many, one process runs out of them
# (and then fails health checks and logins for everyone) long before its CPU does.
OPEN_FILES_WANTED = 65_536
OPEN_FILES_WARNING = 4_096


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (at most
    ``OPEN_FILES_WANTED``), warning when the result is still low; returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        logger.info("open-file limit raised from %d to %d", soft, wanted)
        soft = wanted
    if soft != resource.RLIM_INFINITY and soft < OPEN_FILES_WARNING:
        logger.warning(
            "open-file limit is %d: each connection holds a file, so this process serves fewer than that; "
            "raise it (systemd: LimitNOFILE=, shell: ulimit -n)",
            soft,
        )
    return soft


async def close_orphaned_sessions(presence: Presence) -> None:
    """End the database sessions that presence does not know as live: every one, for a
    single process starting; those left by processes that died unseen, for a cluster."""
    try:
        live = set()
        for key, session_id in await database_sync_to_async(history.open_sessions)():
            session = await presence.session(room_key=key)
            if session is not None and session.session_id == session_id:
                live.add(session_id)
    except PresenceUnavailable:
        logger.warning("presence unavailable at start-up; open call sessions left as they are")
        return
    closed = await database_sync_to_async(history.close_orphaned_sessions)(keep=live)
    if closed:
        logger.warning("closed %d call sessions left open by a previous run", closed)
