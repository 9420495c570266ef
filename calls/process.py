"""What one server process holds, with one owner.

The connections it serves (by socketId), their mailboxes, its inbox on the channel
layer, its presence store, its call-history writer, the per-user join windows and its
background tasks live in one ``ProcessState``, built at first use. Nothing else keeps
per-process state in module globals, so a test starts from a fresh one (``reset``) and
nothing of one test's connections reaches the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from calls.auth.throttle import SlidingWindows
    from calls.delivery import Mailbox
    from calls.history import HistoryWriter
    from calls.presence.base import Presence
    from calls.services.caller import Caller
    from calls.services.resume import ParkedHere

JOIN_WINDOW_SECS = 60.0  # CALLS_JOINS_PER_MINUTE


class ProcessState:
    def __init__(self) -> None:
        self.connections: dict[str, Caller] = {}  # the connections this process serves
        self.mailboxes: dict[str, Mailbox] = {}  # …and what waits for each of them
        self.parked: dict[str, ParkedHere] = {}  # connections it parked, while late messages may come
        self.all_closed: asyncio.Event | None = None  # set while a shutdown waits for the last close
        # This process's inbox on the channel layer, made when a connection first needs
        # it, and whether presence may publish to inboxes itself (calls.delivery.forward).
        self.inbox_name: asyncio.Future[str] | None = None
        self.inbox: str | None = None
        self.forwardable = False
        self._presence: Presence | None = None
        self._writer: HistoryWriter | None = None
        self._join_windows: SlidingWindows | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def presence(self) -> Presence:
        """The presence store, built on first use from ``CALLS_PRESENCE_BACKEND``."""
        if self._presence is None:
            self._presence = import_string(settings.CALLS_PRESENCE_BACKEND).from_settings(settings)
        return self._presence

    @property
    def writer(self) -> HistoryWriter:
        if self._writer is None:
            from calls.history import HistoryWriter

            self._writer = HistoryWriter()
        return self._writer

    @property
    def join_windows(self) -> SlidingWindows:
        """Joins per user in the last minute: in Redis with REDIS_URL, else in memory."""
        if self._join_windows is None:
            from calls.auth.throttle import sliding_windows

            self._join_windows = sliding_windows("joins", JOIN_WINDOW_SECS)
        return self._join_windows

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a coroutine on its own, keeping a reference so it is not collected (the
        loop holds tasks weakly), until it ends or the state is reset."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def cancel_tasks(self) -> None:
        for task in list(self._tasks):
            if not task.done() and not task.get_loop().is_closed():  # a test's loop may be gone
                task.cancel()


_state: ProcessState | None = None


def current() -> ProcessState:
    global _state
    if _state is None:
        _state = ProcessState()
    return _state


def reset() -> ProcessState:
    """A fresh state in place of the current one (tests), whose tasks are cancelled."""
    global _state
    if _state is not None:
        _state.cancel_tasks()
    _state = ProcessState()
    return _state
