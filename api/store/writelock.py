"""The cross-process write lock of the local store: writers wait for it asleep in the kernel.

SQLite lets one writer in at a time and tells the others "busy" at once (the busy timeout is
0); retrying with a back-off made every waiting process wake, try and sleep again many times
per transaction, and a freed lock sat unused until the next wake-up. On POSIX the writers of all
processes queue on an ``flock`` of a file beside the database instead: the kernel wakes one of
them as soon as the lock is released, and its ``BEGIN IMMEDIATE`` then finds SQLite free.

The lock only orders the store's own writers; SQLite's lock stays the authority (a writer that
does not take this lock is still waited for by the back-off). Elsewhere (Windows) there is no
such lock and the back-off alone does the waiting, as before.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path

try:  # POSIX only: never on Windows
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "write.lock"


class _Wait:
    """One thread's wait for the lock, served by the lock's waiting thread."""

    __slots__ = ("abandoned", "done", "failed")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.abandoned = False
        self.failed = False


class WriteLock:
    """An exclusive lock shared by every process that opens the same folder.

    ``acquire(block=False)`` never waits. A blocking acquire sleeps in the kernel for at most
    ``timeout`` seconds (the store's lock timeout, after which the caller answers 503), except on
    the main thread (the event loop's, in a server worker), which must not sleep there: on it, and
    where ``flock`` does not exist, the lock is only tried and the caller's back-off does the
    waiting. ``flock`` itself has no timeout, so the sleeping is done by one waiting thread per
    process, which hands the lock to the thread that asked for it (or lets it go again if that
    thread gave up). A lock that cannot be used (a file system without ``flock``) is given up
    once and the back-off does all the waiting.
    """

    def __init__(self, folder: Path) -> None:
        self._fd: int | None = None
        self._mutex = threading.Lock()
        self._waits: queue.SimpleQueue[_Wait | None] = queue.SimpleQueue()
        self._waiter: threading.Thread | None = None
        if fcntl is None:
            return
        try:
            self._fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:
            self._fd = None

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def acquire(self, block: bool, timeout: float = 10.0) -> bool:
        """True once held; False if it was taken and ``block`` is False, waiting is not allowed
        on this thread, or ``timeout`` passed."""
        if self._fd is None:
            return False
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if not block or threading.current_thread() is threading.main_thread():
                return False
        except OSError:
            self.close()  # no flock on this file system: the back-off alone waits from now on
            return False
        return self._wait_for(timeout)

    def _wait_for(self, timeout: float) -> bool:
        wait = _Wait()
        with self._mutex:
            if self._waiter is None:
                self._waiter = threading.Thread(target=self._serve, name="etl-write-lock", daemon=True)
                self._waiter.start()
            self._waits.put(wait)
        if not wait.done.wait(max(0.0, timeout)):
            with self._mutex:
                if not wait.done.is_set():
                    wait.abandoned = True  # the waiting thread lets it go when it gets it
                    return False
        if wait.failed:
            self.close()
            return False
        return True

    def _serve(self) -> None:
        while True:
            wait = self._waits.get()
            if wait is None:
                return
            fd = self._fd
            try:
                if fd is None:
                    raise OSError("the write lock is closed")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                wait.failed = True
                wait.done.set()
                continue
            with self._mutex:
                if wait.abandoned:
                    # Its thread gave up. Should another thread of this process have taken the
                    # lock through the same descriptor meanwhile, this lets it go under that
                    # thread: SQLite's lock still keeps writers apart, only the queue order is lost.
                    try:
                        fcntl.flock(fd, fcntl.LOCK_UN)
                    except OSError:
                        pass
                else:
                    wait.done.set()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._mutex:
            fd, self._fd = self._fd, None
            if self._waiter is not None:
                self._waits.put(None)
                self._waiter = None
        if fd is not None:
            os.close(fd)
