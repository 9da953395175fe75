"""The local store: diskcache as the shared index and coordination layer, one JSON file per task.

Every key and every path is built from a validated task id (keys.py, files.py). All state
changes happen in one diskcache transaction (SQLite ``BEGIN IMMEDIATE``), so every worker
process on the machine sees the same truth; the JSON file follows each committed change.
This module opens the store and owns its transactions and guarded reads; the verbs are the
mixins TaskStore is composed of (records.py, admitting.py, ending.py, reading.py, ...).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import diskcache

from api.errors import StorageUnavailable
from api.store.admitting import Admitting
from api.store.cachedb import CACHE_DB, key_count, key_range, open_cache, savepoint
from api.store.checkpoint import Checkpointer
from api.store.cleanup import Cleanup
from api.store.commit_group import CommitGroup
from api.store.ending import Ending
from api.store.events import EventLog
from api.store.files import FileWriter, StoragePaths
from api.store.liveness import Liveness
from api.store.logindex import LogIndex
from api.store.mirror import TaskFiles
from api.store.orchestration import Orchestration
from api.store.reading import Reading
from api.store.records import Records
from api.store.resources import Resources
from api.store.schedules import ScheduleRecords
from api.store.signing import SigningKey
from api.store.watch import TaskWatch
from api.store.writelock import WriteLock
from api.task import Task

logger = logging.getLogger(__name__)

T = TypeVar("T")


class StoreBusy(Exception):
    """The write lock is taken and the caller asked not to wait (it retries off the event loop)."""


def _disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc)


class TaskStore(Records, Admitting, Ending, TaskFiles, Cleanup, Liveness, Reading, EventLog, SigningKey,
                Orchestration, Resources, ScheduleRecords):
    """All task state shared between worker processes."""

    def __init__(
        self,
        root: Path,
        work_root: Path,
        output_root: Path,
        *,
        ttl_seconds: float,
        max_running: int,
        max_queued: int,
        worker_lost_after_seconds: float,
        cache_timeout_seconds: float = 10.0,
    ) -> None:
        self.paths = StoragePaths(root, work_root, output_root)
        self.ttl_seconds = ttl_seconds
        self.max_running = max_running
        self.max_queued = max_queued
        self.worker_lost_after_seconds = worker_lost_after_seconds
        self._cache_timeout = cache_timeout_seconds
        self._cache: diskcache.Cache | None = None
        self._db_fd: int | None = None  # held open: its link count drops to 0 if the file is deleted
        self.lost_reason: str | None = None  # set once the cache database is found deleted or replaced
        self._writer: FileWriter | None = None
        self._checkpointer: Checkpointer | None = None
        self._write_lock = threading.RLock()
        self._txn_depth = 0  # nesting of _transaction in the thread holding _write_lock
        self._txn_thread: int | None = None  # that thread
        self._commits = CommitGroup(self._transaction, lambda: savepoint(self.cache))
        self._process_lock: WriteLock | None = None
        self._alive_seen: tuple[float, set[str]] = (0.0, set())
        self._status_bodies: dict[str, tuple[str, float, bytes]] = {}  # task id -> (row, expires, /status body)
        self._files_done: dict[str, int] = {}  # task id -> revision this process's writer put on disk
        self.watch = TaskWatch()
        self._logs = LogIndex()
        # (task, error) -> seconds until the next attempt, or None: the retry policy (api/orchestration/retries.py)
        self.retry_decider: Callable[[Task, dict[str, Any]], float | None] | None = None

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        """Create the folders and open the cache (in the process that will use it: after fork)."""
        for folder in (self.paths.root, self.paths.logs_dir, self.paths.work_root, self.paths.cache_dir):
            folder.mkdir(parents=True, exist_ok=True)
            if os.name == "posix":
                with contextlib.suppress(OSError):
                    folder.chmod(0o700)
        self._cache = open_cache(self.paths.cache_dir, self._cache_timeout)
        self._db_fd = os.open(self.paths.cache_dir / CACHE_DB, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        self._process_lock = WriteLock(self.paths.cache_dir)

    def start_checkpoints(self) -> None:
        """Checkpoint the cache in the background (checkpoint.py) while the store is open."""
        self._checkpointer = Checkpointer(self.cache, self.paths.cache_dir)
        self._checkpointer.start()

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._db_fd is not None:
            os.close(self._db_fd)
            self._db_fd = None
        if self._process_lock is not None:
            self._process_lock.close()
            self._process_lock = None

    def check_database(self) -> None:
        """StorageUnavailable once the cache database file is gone or replaced under us.

        Writes to a deleted SQLite file still succeed but are lost with the process, so from then
        on no task is admitted or started (submit and claim_next call this). Tasks already
        running still record their end through the open connection, and their JSON files (the
        durable record) follow, so a restart rebuilds the index with their true outcome.
        """
        if self.lost_reason is None and self._db_fd is not None and os.fstat(self._db_fd).st_nlink == 0:
            self.lost_reason = (f"the task cache {self.paths.cache_dir / CACHE_DB} was deleted or replaced while "
                                "the server ran; restart the service to rebuild it from the task files")
            logger.critical("%s", self.lost_reason)
        if self.lost_reason is not None:
            raise StorageUnavailable(f"The task store is unavailable: {self.lost_reason}.")

    @property
    def cache(self) -> diskcache.Cache:
        if self._cache is None:
            raise StorageUnavailable("The task store is not open.")
        return self._cache

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except diskcache.Timeout as exc:
            raise StorageUnavailable("The task store is busy (lock timeout); retry shortly.") from exc
        except (sqlite3.OperationalError, OSError) as exc:
            if _disk_full(exc):
                raise StorageUnavailable("The storage disk is full; free space on it and retry.") from exc
            if isinstance(exc, sqlite3.OperationalError):
                raise StorageUnavailable(f"The task store cannot be used: {exc}.") from exc
            raise StorageUnavailable(f"The task storage cannot be written: {exc.strerror or exc}.") from exc

    @contextlib.contextmanager
    def _transaction(self, wait: bool = True) -> Iterator[None]:
        """One write transaction (re-entrant within a thread).

        Threads of this process queue on a lock, and the processes on the store's write lock
        (writelock.py: asleep in the kernel until the holder commits). A writer that cannot take
        that lock (Windows; the event loop's thread, which must not sleep) waits for SQLite with a
        short back-off. SQLite's own busy handler sleeps 1, 2, 5, 10 ms and more, which dominated
        task latency under contention, so the connection's busy timeout is 0 and the wait is ours.
        With ``wait=False`` a taken lock raises StoreBusy at once (for callers on an event loop).
        """
        if not self._write_lock.acquire(blocking=wait):
            raise StoreBusy()
        lock = self._process_lock if self._txn_depth == 0 else None
        self._txn_depth += 1
        self._txn_thread = threading.get_ident()
        locked = False
        deadline = time.monotonic() + self._cache_timeout
        try:
            if lock is not None:
                locked = lock.acquire(block=wait, timeout=self._cache_timeout)
                if not locked and not wait and lock.enabled:
                    raise StoreBusy()
            with self._guard(), contextlib.ExitStack() as stack:
                delay = 50e-6
                while True:
                    try:
                        stack.enter_context(self.cache.transact())
                        break
                    except diskcache.Timeout:
                        if not wait:
                            raise StoreBusy() from None
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(delay)
                        delay = min(delay * 2, 2e-3)
                yield
        finally:
            self._txn_depth -= 1
            if self._txn_depth == 0:
                self._txn_thread = None
            if locked:
                lock.release()
            self._write_lock.release()

    def _grouped(self, work: Callable[[], T]) -> T:
        """``work()`` in a write transaction shared with the other threads of this process that
        write meanwhile (commit_group.py); inside the caller's own transaction if it is in one."""
        if self._txn_thread == threading.get_ident():
            return work()
        return self._commits.run(work)

    def _read(self, read: Callable[[], Any]) -> Any:
        """Run a read, retrying briefly in the rare case SQLite reports the database busy."""
        deadline = time.monotonic() + self._cache_timeout
        delay = 50e-6
        with self._guard():
            while True:
                try:
                    return read()
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 2e-3)

    def _get(self, key: str, default: Any = None) -> Any:
        return self._read(lambda: self.cache.get(key, default))

    def _range(self, prefix: str, **kwargs: Any) -> list[tuple[str, Any]]:
        return self._read(lambda: key_range(self.cache, prefix, **kwargs))

    def _count(self, prefix: str) -> int:
        return self._read(lambda: key_count(self.cache, prefix))
