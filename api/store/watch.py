"""Wakes long-polls (``GET /status?wait=``) the moment this worker changes the task they wait on.

Changes made by other workers are still found by polling the store; this only removes the poll
delay for the common case of a task that runs on the worker the client talks to.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class TaskWatch:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._any: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        # Set while anyone waits (a follower of other hosts' changes reads them only then).
        self.watched = threading.Event()

    @contextlib.contextmanager
    def watch_any(self) -> Iterator[asyncio.Event]:
        """An event set whenever this process commits a change to any task (the event feed's reader)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._any.add(entry)
            self.watched.set()
        try:
            yield entry[1]
        finally:
            with self._lock:
                self._any.discard(entry)
                self._idle()

    @contextlib.contextmanager
    def watch(self, task_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever this process commits a change to ``task_id`` (use on the event loop)."""
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiting.setdefault(task_id, set()).add(entry)
            self.watched.set()
        try:
            yield entry[1]
        finally:
            with self._lock:
                waiting = self._waiting.get(task_id)
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiting[task_id]
                self._idle()

    def _idle(self) -> None:
        if not self._waiting and not self._any:
            self.watched.clear()

    def changed_all(self) -> None:
        """Wake every waiter (a change may have gone unnoticed: they read their task again)."""
        with self._lock:
            entries = [entry for waiting in self._waiting.values() for entry in waiting] + list(self._any)
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def changed(self, task_id: str) -> None:
        """Called from any thread after a change to ``task_id`` is committed."""
        if not self._waiting and not self._any:
            return
        with self._lock:
            entries = [*self._waiting.get(task_id, ()), *self._any]
        for loop, event in entries:
            with contextlib.suppress(RuntimeError):  # the loop closed while shutting down
                loop.call_soon_threadsafe(event.set)
