"""Copies the store's write-ahead log into its database in the background, off the commits.

SQLite does that copy (a checkpoint) inside the commit that makes the log reach its limit: with
the default of 1,000 pages, one commit in about a hundred wrote ~4 MB back and synced the database
while it still held the store's write lock, 5-20 ms during which no worker could commit: most of
the round trip's p99. Here one process of the machine (the one holding ``checkpoint.lock``; on
Windows each process) copies new pages every CHECK_SECONDS with a PASSIVE checkpoint, which
never waits for a writer nor makes one wait; the commit-time checkpoint stays as the safety net
(cachedb.WAL_AUTOCHECKPOINT_PAGES), and finds little left to copy. When the holder exits, the
kernel frees the lock and another process's thread takes it at its next check.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from pathlib import Path

import diskcache

from api.store.cachedb import CACHE_DB, checkpoint

try:  # POSIX only: never on Windows
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

CHECK_SECONDS = 0.25
LOCK_FILE = "checkpoint.lock"


class Checkpointer:
    """A daemon thread of this process that checkpoints the cache whenever its log was written."""

    def __init__(self, cache: diskcache.Cache, cache_dir: Path) -> None:
        self._cache = cache
        self._log = cache_dir / f"{CACHE_DB}-wal"
        self._lock_path = cache_dir / LOCK_FILE
        self._lock_fd: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etl-checkpoint", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        copied_at = None  # the log's modification time when it was last copied in full
        failing = False
        while not self._stop.wait(CHECK_SECONDS):
            try:
                if not self._holds_lock():
                    continue
                stamp = os.stat(self._log).st_mtime_ns
                if stamp == copied_at:
                    continue
                if checkpoint(self._cache):
                    copied_at = stamp
                failing = False
            except (OSError, sqlite3.Error) as exc:
                # Busy or gone for a moment (a rebuild, a full disk): the next check tries again,
                # and commits still checkpoint past the safety limit.
                if not failing:
                    logger.warning("could not checkpoint the task cache (retrying): %s", exc)
                failing = True
        self._cache.close()  # this thread's connection
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # frees the lock for another process

    def _holds_lock(self) -> bool:
        """Whether this process is the one that checkpoints (taking the lock if it is free)."""
        if fcntl is None:
            return True
        if self._lock_fd is None:
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
