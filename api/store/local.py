"""The local store: diskcache as the shared index and coordination layer, one JSON file per task.

Every key and every path is built from a validated task id (keys.py, files.py). All state
changes happen in one diskcache transaction (SQLite ``BEGIN IMMEDIATE``), so every worker
process on the machine sees the same truth; the JSON file follows each committed change.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache

from api.errors import (
    ApiError,
    Conflict,
    QueueFull,
    RateLimited,
    StorageUnavailable,
    TaskNotFound,
)
from api.store.admission import Admission, admit
from api.store.cachedb import CACHE_DB, key_count, key_range, open_cache, put, remove, savepoint
from api.store.cleanup import Cleanup
from api.store.counters import Counters
from api.store.events import EventLog
from api.store.files import FileWriter, StoragePaths
from api.store.keys import (
    K_COUNTERS,
    K_DIRTY,
    K_EXPIRES,
    K_IDEMPOTENCY,
    K_KEY_HELD,
    K_KEY_WAIT,
    K_RATE,
    K_STATUS,
    K_STEP,
    K_STOP,
    K_TASK,
    QUEUE_PREFIX,
)
from api.store.ending import Ending
from api.store.liveness import Liveness
from api.store.logindex import LogIndex
from api.store.mirror import TaskFiles
from api.store.orchestration import Orchestration
from api.store.reading import Reading
from api.store.signing import SigningKey
from api.store.resources import Resources
from api.store.schedules import ScheduleRecords
from api.store.watch import TaskWatch
from api.store.writelock import WriteLock
from api.task import Task, TaskStatus, is_task_id, now_iso, parse_iso
from api.workers import WorkerInfo

logger = logging.getLogger(__name__)

# A queued or running state's file is written this long after the change, unless the task ends
# first: then only the ended state is written. A no-op task's two writes (with their fsyncs)
# were a quarter of its cost.
FILE_SETTLE_SECONDS = 0.05
QUEUE_FULL_RETRY_SECONDS = 5
CLAIM_SCAN_PAGE = 100


class StoreBusy(Exception):
    """The write lock is taken and the caller asked not to wait (it retries off the event loop)."""


def _disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "disk is full" in str(exc)


class TaskStore(Ending, TaskFiles, Cleanup, Liveness, Reading, EventLog, SigningKey, Orchestration, Resources,
                ScheduleRecords):
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
        self._write_lock = threading.RLock()
        self._txn_depth = 0  # nesting of _transaction in the thread holding _write_lock
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

    def close(self) -> None:
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
            if locked:
                lock.release()
            self._write_lock.release()

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

    # --- task records --------------------------------------------------------------------

    def get(self, task_id: str) -> Task:
        """The task, or TaskNotFound (also for a malformed or expired id)."""
        if not is_task_id(task_id):
            raise TaskNotFound()
        data = self._get(K_TASK + task_id)
        if data is None:
            raise TaskNotFound()
        task = Task.from_dict(data)
        if task.expired():
            raise TaskNotFound()
        return task

    def _load(self, task_id: str) -> Task | None:
        data = self._get(K_TASK + task_id)
        return Task.from_dict(data) if data is not None else None

    def _counters(self) -> Counters:
        return Counters(self.cache.get(K_COUNTERS))

    def _save_counters(self, counters: Counters) -> None:
        put(self.cache, K_COUNTERS, counters.data)

    def _write(self, task: Task, previous: TaskStatus | None, counters: Counters | None = None,
               file_current: bool = False, history_before: int | None = None) -> None:
        """Store ``task`` and keep the indexes, counters and change feed in step (inside a transaction).

        ``counters``: given when the caller saves them once for many writes; else updated here.
        ``file_current``: the JSON file already holds this state (a rebuild): not marked dirty, no event.
        ``history_before``: the history length before the change (a grown history is a status event).
        """
        cache = self.cache
        task.rev += 1
        moved = previous is not task.status
        own = counters is None
        if own and (moved or not file_current):
            counters = self._counters()
        if not file_current:
            task.event_id = self._record_event(task, previous, history_before, counters)
            put(cache, K_DIRTY + task.task_id, {"rev": task.rev, "at": time.time()})
        put(cache, K_TASK + task.task_id, task.to_dict())
        if moved:
            self._index_move(task, previous, counters)
        if own and counters is not None:
            self._save_counters(counters)

    def _index_move(self, task: Task, previous: TaskStatus | None, counters: Counters) -> None:
        """The status and step indexes and the counters follow a change of state."""
        cache = self.cache
        owner = task.worker["id"] if task.worker and task.status is TaskStatus.RUNNING else None
        if previous is not None:
            remove(cache, f"{K_STATUS}{previous.value}:{task.task_id}")
        else:
            put(cache, f"{K_STEP}{task.step_name}:{task.task_id}", "")
        index = {"step": task.step_name, "owner": owner}
        if task.pipeline is not None:
            index["pipeline"] = True  # a pipeline task runs no thread: it holds no slot and has no owner to lose
        put(cache, f"{K_STATUS}{task.status.value}:{task.task_id}", index)
        counters.moved(task.step_name, previous.value if previous else None, task.status.value)
        if previous is None:
            counters.submitted(task.step_name)
        if task.status is TaskStatus.RUNNING and task.worker and task.started_at:
            # From the latest time it (re)joined the queue: a retry's wait excludes its earlier attempts.
            queued_at = next((h["at"] for h in reversed(task.history) if h["status"] == "queued"), task.created_at)
            waited = max(0.0, parse_iso(task.started_at) - parse_iso(queued_at))
            counters.started(f"{task.worker['host']}:{task.worker['pid']}", waited, task.step_name,
                             self._key_of(task))
        if task.status.terminal:
            put(cache, self._expiry_key(task), "")
            counters.ended(task.step_name, task.status.value, task.duration_seconds)
            if task.stop_requested:
                remove(cache, K_STOP + task.task_id)

    @staticmethod
    def _expiry_key(task: Task) -> str:
        # Rounded up, so a task is never removed before its expires_at.
        expires = math.ceil(parse_iso(task.expires_at) if task.expires_at else time.time())
        return f"{K_EXPIRES}{expires:014d}:{task.task_id}"

    def _sync_file(self, task: Task) -> None:
        """After a committed change: bring the JSON file up to date (on the writer thread if there
        is one, else now) and wake this process's long-polls."""
        task_id = task.task_id
        self.watch.changed(task_id)
        if self._writer is not None:
            self._writer.enqueue(task_id, 0.0 if task.status.terminal else FILE_SETTLE_SECONDS)
        elif self.write_file(task_id) is not None:
            with self._transaction():
                self.cache.delete(K_DIRTY + task_id)

    def update(self, task_id: str, change: Callable[[Task], bool]) -> Task | None:
        """Apply ``change`` to the task in one transaction (it returns False to leave it as is)."""
        with self._transaction():
            task = self._load(task_id)
            if task is None:
                return None
            previous, history_before = task.status, len(task.history)
            if not change(task):
                return task
            self._write(task, previous, history_before=history_before)
        self._sync_file(task)
        return task

    # --- admission -----------------------------------------------------------------------

    def live_running(self, alive: set[str] | None = None) -> int:
        """Running tasks whose owner is alive (a dead owner's slot is free at once)."""
        alive = self.alive_workers() if alive is None else alive
        return sum(1 for _, index in self._range(f"{K_STATUS}running:") if index.get("owner") in alive)

    def queued_count(self) -> int:
        return self._count(QUEUE_PREFIX + "-")

    def submit(self, task: Task, worker: WorkerInfo, idempotency: tuple[str, str] | None,
               rate: tuple[str, float] | None = None, wait: bool = True) -> tuple[Task, bool]:
        """Admit ``task``: running if a slot is free, queued if not, QueueFull beyond the queue limit.

        Returns (task, replayed): with an idempotency (key, request fingerprint) seen before, the
        earlier task and True; Conflict if that key came with a different request. An earlier
        task that has expired no longer holds its key. With ``wait=False``, StoreBusy instead of
        waiting for the write lock.
        """
        self.check_database()
        alive = self.alive_recently()  # process checks outside the lock
        with self._transaction(wait):
            found = self._submit_in_transaction(task, worker, idempotency, rate, alive)
        # The commit went to the database file only if that file is still the one we opened.
        self.check_database()
        if found is not None:
            return found, True
        self._sync_file(task)
        return task, False

    def submit_group(self, items: list[tuple[Task, tuple[str, str] | None, tuple[str, float] | None]],
                     worker: WorkerInfo) -> list[tuple[Task, bool] | ApiError]:
        """Admit several tasks (task, idempotency, rate) in one transaction, in their order: one
        commit and one wait for the write lock instead of one each. Each gets what ``submit``
        would answer, or the ApiError refusing it (that task's writes undone, the others kept);
        an error of the store itself refuses them all (raised)."""
        self.check_database()
        alive = self.alive_recently()
        answers: list[tuple[Task, bool] | ApiError] = []
        with self._transaction():
            for task, idempotency, rate in items:
                try:
                    with savepoint(self.cache):
                        found = self._submit_in_transaction(task, worker, idempotency, rate, alive)
                except ApiError as exc:
                    answers.append(exc)
                    continue
                answers.append((found, True) if found is not None else (task, False))
        self.check_database()
        for answer in answers:
            if not isinstance(answer, ApiError) and not answer[1]:
                self._sync_file(answer[0])
        return answers

    def _submit_in_transaction(self, task: Task, worker: WorkerInfo, idempotency: tuple[str, str] | None,
                               rate: tuple[str, float] | None, alive: set[str]) -> Task | None:
        """Admit ``task`` (inside a transaction); the earlier task of a replayed idempotency key
        instead, without admitting anything."""
        cache = self.cache
        if idempotency:
            seen = cache.get(K_IDEMPOTENCY + idempotency[0])
            earlier = self._load(seen["task_id"]) if seen is not None else None
            if earlier is not None and not earlier.expired():
                if seen["fingerprint"] != idempotency[1]:
                    raise Conflict("This Idempotency-Key was already used with a different request "
                                   f"(task {earlier.task_id}); use a new key.", task_id=earlier.task_id)
                return earlier
        if rate is not None:
            self._take_token(*rate)
        if idempotency:
            task.idempotency_key, task.idempotency_fingerprint = idempotency
        self._admit_new(task, worker, alive)
        return None

    def _admit_new(self, task: Task, worker: WorkerInfo, alive: set[str], accepted: bool = False,
                   starts_here: bool = True) -> None:
        """Start, queue or refuse a new task and store it (inside a transaction)."""
        self._check_singleton(task, alive)
        queued = self.queued_count()
        task.history.append({"status": TaskStatus.QUEUED.value, "at": now_iso(), "reason": "accepted"})
        key_free = self._key_free(task, alive)
        decision = admit(ahead=queued, running=self.live_running(alive), max_running=self.max_running,
                         max_queued=self.max_queued, accepted=accepted, key_free=key_free, starts_here=starts_here)
        if decision is Admission.RUN:
            self._start(task, worker, "started at once: a slot was free")
        elif decision is Admission.QUEUE:
            task.queue_key = self.cache.push(task.task_id, prefix=QUEUE_PREFIX)
            self._mark_key(K_KEY_WAIT, task, True)
            task.message = "waiting for a free slot" if key_free else f"waiting for key {self._key_of(task)}"
        else:
            raise QueueFull(f"The queue is full ({queued} tasks waiting, limit {self.max_queued}); retry later.",
                            retry_after_seconds=QUEUE_FULL_RETRY_SECONDS)
        if task.idempotency_key:
            self._remember_idempotency(task)
        self._write(task, None)

    def _remember_idempotency(self, task: Task) -> None:
        put(self.cache, K_IDEMPOTENCY + task.idempotency_key,
                       {"task_id": task.task_id, "fingerprint": task.idempotency_fingerprint})

    def _take_token(self, bucket: str, per_minute: float) -> None:
        """Token bucket per API key, in the shared store (inside the admission transaction)."""
        key = K_RATE + bucket
        now = time.time()
        state = self.cache.get(key) or {"tokens": per_minute, "at": now}
        tokens = min(per_minute, state["tokens"] + (now - state["at"]) * per_minute / 60.0)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) * 60.0 / per_minute)
            raise RateLimited(f"Too many tasks started with this key (limit {per_minute:g} per minute); "
                              f"retry in {wait} s.", retry_after_seconds=wait)
        put(self.cache, key, {"tokens": tokens - 1.0, "at": now})

    def _start(self, task: Task, worker: WorkerInfo, reason: str) -> None:
        self._mark_key(K_KEY_WAIT, task, False)
        self._mark_key(K_KEY_HELD, task, True)
        task.worker = worker.as_dict()
        task.message = "running"
        task.transition(TaskStatus.RUNNING, f"{reason} (worker {worker.host}:{worker.pid})", self.ttl_seconds)

    def claim_next(self, worker: WorkerInfo) -> Task | None:
        """Start the oldest queued task on ``worker`` if the global cap allows; None otherwise."""
        if self.queued_count() == 0:
            return None
        self.check_database()
        alive = self.alive_recently()
        with self._transaction():
            running = self.live_running(alive)
            if admit(ahead=0, running=running, max_running=self.max_running,
                     max_queued=self.max_queued) is not Admission.RUN:
                return None
            task = self._first_runnable(alive)
            if task is None:
                return None
            task.queue_key = None
            self._start(task, worker, "a slot became free")
            self._write(task, TaskStatus.QUEUED)
        self._sync_file(task)
        return task

    def _first_runnable(self, alive: set[str]) -> Task | None:
        """The oldest queued task whose concurrency key is free, taken off the queue (inside a
        transaction). Tasks waiting for a busy key keep their place; the ones behind them may start."""
        after = None
        while True:
            rows = self._queue_head(after, CLAIM_SCAN_PAGE)
            for key, task_id in rows:
                task = self._load(task_id)
                if task is None or task.status is not TaskStatus.QUEUED:
                    self.cache.delete(key)  # a stale entry (stopped or removed meanwhile)
                    continue
                if self._key_free(task, alive):
                    self.cache.delete(key)
                    return task
            if len(rows) < CLAIM_SCAN_PAGE:
                return None
            after = rows[-1][0][len(QUEUE_PREFIX) + 1:]
