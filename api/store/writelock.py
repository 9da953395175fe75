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
import threading
from pathlib import Path

try:  # POSIX only: never on Windows
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = "write.lock"


class WriteLock:
    """An exclusive lock shared by every process that opens the same folder.

    ``acquire(block=False)`` never waits. A blocking acquire sleeps in the kernel, except on the
    main thread (the event loop's, in a server worker), which must never sleep past its own
    deadline: there, and where ``flock`` does not exist, the lock is only tried and the caller's
    back-off does the waiting. A lock that cannot be used (a file system without ``flock``) is
    given up once and the back-off does all the waiting.
    """

    def __init__(self, folder: Path) -> None:
        self._fd: int | None = None
        if fcntl is None:
            return
        try:
            self._fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError:
            self._fd = None

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def acquire(self, block: bool) -> bool:
        """True once held; False if it was taken and ``block`` is False (or waiting is not allowed here)."""
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
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            return True
        except OSError:
            self.close()
            return False

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
