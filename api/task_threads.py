"""The daemon threads that run task bodies in this process, reused once idle."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)


class TaskThreads:
    """Daemon threads that run task bodies. An idle thread is reused, so starting a task does not
    wait for a new thread to boot; a thread abandoned by a stubborn step is simply never idle again."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, name: str, job: Callable[[], None]) -> None:
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
        if reuse:
            self._jobs.put((name, job))
        else:
            threading.Thread(target=self._serve, args=(name, job), name=name, daemon=True).start()

    def _serve(self, name: str, job: Callable[[], None]) -> None:
        while True:
            threading.current_thread().name = name
            try:
                job()
            except Exception:
                logger.exception("task thread error")
            threading.current_thread().name = "task-idle"
            with self._lock:
                self._idle += 1
            name, job = self._jobs.get()
