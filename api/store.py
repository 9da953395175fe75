"""The task store: diskcache as the shared index and coordination layer, one JSON file per task.

Every key and every path is built here, and only after the task id is validated. All state
changes happen in one diskcache transaction (SQLite ``BEGIN IMMEDIATE``), so every worker
process sees the same truth; the JSON file is rewritten after each committed change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diskcache

from api.cache import (
    K_COUNTERS, K_DIRTY, K_EXPIRES, K_IDEMPOTENCY, K_LEASE, K_META, K_RATE, K_STATUS, K_STOP, K_TASK, K_WORKER,
    QUEUE_PREFIX, RANGE_END, delete_many, get_many, key_count, key_range, open_cache,
)
from api.counters import Counters
from api.errors import Conflict, QueueFull, RateLimited, StorageUnavailable, TaskNotFound
from api.files import FileWriter, StoragePaths, write_json_atomic
from api.task import Task, TaskStatus, is_task_id, now_iso, parse_iso
from api.workers import HOSTNAME, HUNG_AFTER_FACTOR, WorkerInfo, process_alive, process_created

logger = logging.getLogger(__name__)

# A queued or running state's file is written this long after the change, unless the task ends
# first: then only the ended state is written. A no-op task's two writes (with their fsyncs)
# were a quarter of its cost.
FILE_SETTLE_SECONDS = 0.05


class TaskStore:
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
        self._writer: FileWriter | None = None
        self._write_lock = threading.RLock()
        self._files_done: dict[str, int] = {}  # task id -> revision this process's writer put on disk
        self.on_change: Callable[[str], None] | None = None  # told the id of each task changed here

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        """Create the folders and open the cache (in the process that will use it: after fork)."""
        for folder in (self.paths.root, self.paths.logs_dir, self.paths.work_root):
            folder.mkdir(parents=True, exist_ok=True)
            if os.name == "posix":
                with contextlib.suppress(OSError):
                    folder.chmod(0o700)
        self._cache = open_cache(self.paths.cache_dir)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.stop()
            self._writer = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None

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
        except sqlite3.OperationalError as exc:
            raise StorageUnavailable(f"The task store cannot be used: {exc}.") from exc
        except OSError as exc:
            raise StorageUnavailable(f"The task storage cannot be written: {exc.strerror or exc}.") from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction (re-entrant within a thread).

        Threads of this process queue on a lock; other processes are waited for with a short
        back-off. SQLite's own busy handler sleeps 1, 2, 5, 10 ms and more, which dominated task
        latency under contention, so the connection's busy timeout is 0 and the wait is ours.
        """
        with self._guard(), self._write_lock, contextlib.ExitStack() as stack:
            deadline = time.monotonic() + self._cache_timeout
            delay = 50e-6
            while True:
                try:
                    stack.enter_context(self.cache.transact())
                    break
                except diskcache.Timeout:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 2e-3)
            yield

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

    # --- raw reads -----------------------------------------------------------------------

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
        if task.expires_at and parse_iso(task.expires_at) <= time.time():
            raise TaskNotFound()
        return task

    def _load(self, task_id: str) -> Task | None:
        data = self._get(K_TASK + task_id)
        return Task.from_dict(data) if data is not None else None

    def _counters(self) -> Counters:
        return Counters(self.cache.get(K_COUNTERS))

    def _write(self, task: Task, previous: TaskStatus | None, counters: Counters | None = None,
               file_current: bool = False) -> None:
        """Store ``task`` and keep the indexes and counters in step (inside a transaction).

        ``counters``: given when the caller saves them once for many writes; else updated here.
        ``file_current``: the JSON file already holds this state (a rebuild), so it is not marked dirty.
        """
        cache = self.cache
        task.rev += 1
        cache.set(K_TASK + task.task_id, task.to_dict())
        if not file_current:
            cache.set(K_DIRTY + task.task_id, {"rev": task.rev, "at": time.time()})
        if previous is task.status:
            return
        owner = task.worker["id"] if task.worker and task.status is TaskStatus.RUNNING else None
        if previous is not None:
            cache.delete(f"{K_STATUS}{previous.value}:{task.task_id}")
        cache.set(f"{K_STATUS}{task.status.value}:{task.task_id}", {"step": task.step_name, "owner": owner})
        own = counters is None
        counters = self._counters() if own else counters
        counters.moved(task.step_name, previous.value if previous else None, task.status.value)
        if previous is None:
            counters.submitted(task.step_name)
        if task.status is TaskStatus.RUNNING and task.worker and task.started_at:
            waited = max(0.0, parse_iso(task.started_at) - parse_iso(task.created_at))
            counters.started(f"{task.worker['host']}:{task.worker['pid']}", waited)
        if task.status.terminal:
            cache.set(self._expiry_key(task), "")
            counters.ended(task.step_name, task.status.value, task.duration_seconds)
            if task.stop_requested:
                cache.delete(K_STOP + task.task_id)
        if own:
            cache.set(K_COUNTERS, counters.data)

    @staticmethod
    def _expiry_key(task: Task) -> str:
        # Rounded up, so a task is never removed before its expires_at.
        expires = math.ceil(parse_iso(task.expires_at) if task.expires_at else time.time())
        return f"{K_EXPIRES}{expires:014d}:{task.task_id}"

    def _sync_file(self, task: Task) -> None:
        """After a committed change: bring the JSON file up to date (on the writer thread if there
        is one, else now) and tell ``on_change``."""
        task_id = task.task_id
        if self.on_change is not None:
            self.on_change(task_id)
        if self._writer is not None:
            self._writer.enqueue(task_id, 0.0 if task.status.terminal else FILE_SETTLE_SECONDS)
        elif self.write_file(task_id) is not None:
            with self._transaction():
                self.cache.delete(K_DIRTY + task_id)

    def write_file(self, task_id: str) -> int | None:
        """Rewrite the task's JSON file from the cache until the file holds the newest revision.

        Writers in other processes may replace the file concurrently; whoever replaces it last
        re-checks the revision, so the file always ends at the latest committed state.
        """
        path = self.paths.task_file(task_id)
        for _ in range(10):
            task = self._load(task_id)
            if task is None:
                return None
            with self._guard():
                write_json_atomic(path, task.file_view())
            latest = self._get(K_TASK + task_id)
            if latest is None or latest.get("rev") == task.rev:
                return task.rev
        return None

    def _files_written(self, written: dict[str, int]) -> None:
        self._files_done.update(written)

    def sweep_dirty(self, older_than_seconds: float = 5.0, orphaned_after_seconds: float = 30.0,
                    limit: int = 500) -> int:
        """Clear the dirty marks of files written since, and write the files a dead writer left.

        Marks are cleared here in one transaction rather than after every write, which would add
        a write transaction per file. Returns how many files had to be written.
        """
        now = time.time()
        clear: list[str] = []
        rewritten = 0
        for key, mark in self._range(K_DIRTY, limit=limit):
            task_id = key[len(K_DIRTY):]
            if mark["at"] > now - older_than_seconds:
                continue
            if self._files_done.get(task_id, -1) >= mark["rev"]:
                clear.append(task_id)
            elif mark["at"] <= now - orphaned_after_seconds or self._writer is None:
                if self.write_file(task_id) is not None:
                    rewritten += 1
                clear.append(task_id)
        if clear:
            with self._transaction():
                for task_id in clear:
                    mark = self.cache.get(K_DIRTY + task_id)
                    task = self.cache.get(K_TASK + task_id)
                    if mark is not None and (task is None or task["rev"] <= mark["rev"]):
                        self.cache.delete(K_DIRTY + task_id)
                    self._files_done.pop(task_id, None)
        return rewritten

    def dirty_count(self) -> int:
        """How many task files lag behind the cache (written soon by their worker or a sweep)."""
        return self._count(K_DIRTY)

    def start_file_writer(self) -> None:
        self._writer = FileWriter(self.write_file, self._files_written)
        self._writer.start()

    def update(self, task_id: str, change: Callable[[Task], bool]) -> Task | None:
        """Apply ``change`` to the task in one transaction (it returns False to leave it as is)."""
        with self._transaction():
            task = self._load(task_id)
            if task is None:
                return None
            previous = task.status
            if not change(task):
                return task
            self._write(task, previous)
        self._sync_file(task)
        return task

    # --- admission -----------------------------------------------------------------------

    def live_running(self) -> int:
        """Running tasks whose owner is alive (a dead owner's slot is free at once)."""
        alive = self.alive_workers()
        return sum(1 for _, index in self._range(f"{K_STATUS}running:") if index.get("owner") in alive)

    def queued_count(self) -> int:
        return self._count(QUEUE_PREFIX + "-")

    def submit(self, task: Task, worker: WorkerInfo, idempotency: tuple[str, str] | None,
               rate: tuple[str, float] | None = None) -> tuple[Task, bool]:
        """Admit ``task``: running if a slot is free, queued if not, QueueFull beyond the queue limit.

        Returns (task, replayed): with an idempotency (key, request fingerprint) seen before, the
        earlier task and True; Conflict if that key came with a different request.
        """
        with self._transaction():
            cache = self.cache
            if idempotency:
                seen = cache.get(K_IDEMPOTENCY + idempotency[0])
                earlier = self._load(seen["task_id"]) if seen is not None else None
                if earlier is not None:
                    if seen["fingerprint"] != idempotency[1]:
                        raise Conflict("This Idempotency-Key was already used with a different request "
                                       f"(task {earlier.task_id}); use a new key.", task_id=earlier.task_id)
                    return earlier, True
            if rate is not None:
                self._take_token(*rate)
            queued = self.queued_count()
            accepted = time.time()
            task.history.append({"status": TaskStatus.QUEUED.value, "at": now_iso(accepted), "reason": "accepted"})
            if queued == 0 and self.live_running() < self.max_running:
                self._start(task, worker, "started at once: a slot was free")
            elif queued < self.max_queued:
                task.queue_key = cache.push(task.task_id, prefix=QUEUE_PREFIX)
                task.message = "waiting for a free slot"
            else:
                raise QueueFull(
                    f"The queue is full ({queued} tasks waiting, limit {self.max_queued}); retry later.",
                    headers={"Retry-After": "5"},
                )
            if idempotency:
                task.idempotency_key = idempotency[0]
                cache.set(K_IDEMPOTENCY + idempotency[0], {"task_id": task.task_id, "fingerprint": idempotency[1]})
            self._write(task, None)
        self._sync_file(task)
        return task, False

    def _take_token(self, bucket: str, per_minute: float) -> None:
        """Token bucket per API key, in the shared store (inside the admission transaction)."""
        key = K_RATE + bucket
        now = time.time()
        state = self.cache.get(key) or {"tokens": per_minute, "at": now}
        tokens = min(per_minute, state["tokens"] + (now - state["at"]) * per_minute / 60.0)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) * 60.0 / per_minute)
            raise RateLimited(f"Too many tasks started with this key (limit {per_minute:g} per minute); "
                              f"retry in {wait} s.", headers={"Retry-After": str(wait)})
        self.cache.set(key, {"tokens": tokens - 1.0, "at": now})

    def _start(self, task: Task, worker: WorkerInfo, reason: str) -> None:
        task.worker = worker.as_dict()
        task.message = "running"
        task.transition(TaskStatus.RUNNING, f"{reason} (worker {worker.host}:{worker.pid})", self.ttl_seconds)

    def claim_next(self, worker: WorkerInfo) -> Task | None:
        """Start the oldest queued task on ``worker`` if the global cap allows; None otherwise."""
        if self.queued_count() == 0:
            return None
        with self._transaction():
            if self.live_running() >= self.max_running:
                return None
            while True:
                key, task_id = self.cache.pull(prefix=QUEUE_PREFIX)
                if key is None:
                    return None
                task = self._load(task_id)
                if task is not None and task.status is TaskStatus.QUEUED:
                    break
            task.queue_key = None
            self._start(task, worker, "a slot became free")
            self._write(task, TaskStatus.QUEUED)
        self._sync_file(task)
        return task

    # --- ending, stopping ----------------------------------------------------------------

    def finish(self, task_id: str, status: TaskStatus, reason: str, *, result: Any = None,
               error: dict[str, Any] | None = None, extra: Callable[[Task], None] | None = None) -> Task | None:
        """Move a task to a terminal state; a task already ended is left as it is."""

        def change(task: Task) -> bool:
            if task.status.terminal:
                return False
            if extra:
                extra(task)
            task.result = result
            task.error = error
            task.message = reason
            task.transition(status, reason, self.ttl_seconds)
            return True

        return self.update(task_id, change)

    def request_stop(self, task_id: str, by: dict[str, Any] | None) -> Task:
        """Stop a queued task now, or flag a running one for its owner; ended tasks are unchanged."""
        self.get(task_id)

        def change(task: Task) -> bool:
            if task.status is TaskStatus.QUEUED:
                if task.queue_key:
                    self.cache.delete(task.queue_key)
                task.stopped_by = by
                task.stop_requested = True
                task.message = "stopped before it started"
                task.transition(TaskStatus.STOPPED, "stop requested while queued", self.ttl_seconds)
                return True
            if task.status is TaskStatus.RUNNING and not task.stop_requested:
                task.stop_requested = True
                task.stopped_by = by
                task.message = "stop requested"
                task.history.append({"status": task.status.value, "at": now_iso(), "reason": "stop requested"})
                self.cache.set(K_STOP + task_id, {"at": time.time(), "by": by})
                return True
            return False

        task = self.update(task_id, change)
        if task is None:
            raise TaskNotFound()
        return task

    def pending_stops(self, task_ids: list[str]) -> set[str]:
        return {task_id for task_id in task_ids if self._get(K_STOP + task_id) is not None}

    def save_progress(self, task_id: str, progress: float, message: str, log_tail: list[str],
                      log_lines: int, artifacts: list[str]) -> None:
        def change(task: Task) -> bool:
            if task.status is not TaskStatus.RUNNING:
                return False
            task.progress, task.message, task.log_tail = progress, message, log_tail
            task.log_lines, task.artifacts = log_lines, artifacts
            return True

        self.update(task_id, change)

    # --- workers -------------------------------------------------------------------------

    def heartbeat(self, worker: WorkerInfo, **extra: Any) -> None:
        created = process_created(worker.pid)
        with self._transaction():
            self.cache.set(K_WORKER + worker.id, {**worker.as_dict(), "at": time.time(), "created": created, **extra})

    def forget_worker(self, worker: WorkerInfo) -> None:
        with self._transaction():
            self.cache.delete(K_WORKER + worker.id)

    def workers(self) -> list[dict[str, Any]]:
        return [beat for _, beat in self._range(K_WORKER)]

    def alive_workers(self) -> set[str]:
        """Ids of live workers.

        A worker on this machine is alive while its process exists (same pid and start time), so
        a killed worker is seen at once and a busy one is never mistaken for dead; only a silence
        of HUNG_AFTER_FACTOR x the heartbeat limit marks a hung one. Workers elsewhere count by
        heartbeat alone.
        """
        now = time.time()
        alive = set()
        for beat in self.workers():
            age = now - beat.get("at", 0)
            if beat.get("host") == HOSTNAME and beat.get("created") is not None:
                if process_alive(beat["pid"], beat["created"]) and age < HUNG_AFTER_FACTOR * self.worker_lost_after_seconds:
                    alive.add(beat["id"])
            elif age < self.worker_lost_after_seconds:
                alive.add(beat["id"])
        return alive

    def reap_lost(self, only_pid: int | None = None) -> list[str]:
        """Fail running tasks whose owner stopped heartbeating (or is the given dead pid)."""
        alive = self.alive_workers()
        lost = []
        for key, index in self._range(f"{K_STATUS}running:"):
            task_id = key.rsplit(":", 1)[1]
            owner = index.get("owner") or ""
            if only_pid is not None:
                parts = owner.split(":")
                if len(parts) < 3 or parts[-2] != str(only_pid) or ":".join(parts[:-2]) != HOSTNAME:
                    continue
            elif owner in alive:
                continue
            reason = f"worker {owner or 'unknown'} died while running the task"
            done = self.finish(task_id, TaskStatus.FAILED, reason,
                               error={"type": "WorkerLost", "message": reason, "traceback": None})
            if done is not None and done.status is TaskStatus.FAILED and done.error and done.error["type"] == "WorkerLost":
                logger.warning("task %s: %s", task_id, reason)
                lost.append(task_id)
        return lost

    # --- leases --------------------------------------------------------------------------

    def acquire_lease(self, name: str, owner: str, seconds: float) -> bool:
        with self._transaction():
            lease = self.cache.get(K_LEASE + name)
            now = time.time()
            if lease is not None and lease["owner"] != owner and lease["expires"] > now:
                return False
            self.cache.set(K_LEASE + name, {"owner": owner, "expires": now + seconds, "at": now})
            return True

    def release_lease(self, name: str, owner: str) -> None:
        with self._transaction():
            lease = self.cache.get(K_LEASE + name)
            if lease is not None and lease["owner"] == owner:
                self.cache.delete(K_LEASE + name)

    def lease(self, name: str) -> dict[str, Any] | None:
        return self._get(K_LEASE + name)

    # --- settings kept in the store ------------------------------------------------------

    def get_value(self, key: str, default: Any = None) -> Any:
        return self._get(key, default)

    def set_value(self, key: str, value: Any) -> None:
        with self._transaction():
            self.cache.set(key, value)

    # --- listing and numbers -------------------------------------------------------------

    def list_tasks(self, *, status: TaskStatus | None, step: str | None, limit: int,
                   cursor: str | None) -> tuple[list[Task], str | None]:
        """Newest first, ``limit`` at most, after ``cursor`` (the last id of the previous page)."""
        found: set[str] = set()
        for state in [status] if status else list(TaskStatus):
            found.update(self._newest_ids(f"{K_STATUS}{state.value}:", step, limit + 1, cursor))
        page_ids = sorted(found, reverse=True)[: limit + 1]
        tasks = [t for t in (self._load(i) for i in page_ids[:limit]) if t is not None]
        next_cursor = page_ids[limit - 1] if len(page_ids) > limit else None
        return tasks, next_cursor

    def _newest_ids(self, prefix: str, step: str | None, want: int, before: str | None) -> list[str]:
        ids: list[str] = []
        page = 200
        while len(ids) < want:
            rows = self._range(prefix, before=before, limit=page, newest_first=True)
            ids += [key[len(prefix):] for key, index in rows if step is None or index.get("step") == step]
            if len(rows) < page:
                break
            before = rows[-1][0][len(prefix):]
        return ids[:want]

    def counters(self) -> Counters:
        """Every count /stats and /metrics report (one read, whatever the number of tasks)."""
        return Counters(self._get(K_COUNTERS))

    def cache_size_bytes(self) -> int:
        total = 0
        for entry in os.scandir(self.paths.cache_dir):
            if entry.is_file():
                total += entry.stat().st_size
        return total

    # --- cleanup -------------------------------------------------------------------------

    def expire(self, now: float | None = None, batch: int = 1000,
               between_batches: Callable[[], None] | None = None) -> dict[str, Any]:
        """Remove every ended task whose expiry has passed: cache entries, JSON, log, work files.

        Queued and running tasks have no expiry key, so they can never be touched. Each batch is
        one short transaction; ``between_batches`` runs after each (the scheduler renews its lease).
        """
        cutoff = time.time() if now is None else now
        removed: list[str] = []
        freed = 0
        while True:
            rows = self._range(K_EXPIRES, before=f"{int(cutoff):014d}:{RANGE_END}", limit=batch)
            if not rows:
                break
            doomed: list[dict[str, Any]] = []  # raw records: building Task objects cost a tenth of the run
            with self._transaction():
                counters = self._counters()
                ids = [key.rsplit(":", 1)[1] for key, _ in rows]
                records = get_many(self.cache, [K_TASK + task_id for task_id in ids])
                keys = [key for key, _ in rows]
                for task_id in ids:
                    data = records.get(K_TASK + task_id)
                    if data is None or not TaskStatus(data["status"]).terminal:
                        continue
                    keys += self._task_keys(data)
                    counters.moved(data["step_name"], data["status"], None)
                    doomed.append(data)
                value_files = delete_many(self.cache, keys)
                self.cache.set(K_COUNTERS, counters.data)
            for name in value_files:
                self.cache.disk.remove(name)
            freed += self._remove_files(doomed)
            removed += [data["task_id"] for data in doomed]
            if between_batches is not None:
                between_batches()
        return {"removed": len(removed), "task_ids": removed[:100], "freed_bytes": freed}

    @staticmethod
    def _task_keys(record: dict[str, Any]) -> list[str]:
        task_id = record["task_id"]
        keys = [K_TASK + task_id, f"{K_STATUS}{record['status']}:{task_id}", K_STOP + task_id, K_DIRTY + task_id]
        if record.get("idempotency_key"):
            keys.append(K_IDEMPOTENCY + record["idempotency_key"])
        return keys

    def _remove_files(self, records: list[dict[str, Any]]) -> int:
        """Delete the tasks' JSON files, logs, artifacts and work folders; returns the bytes freed.

        Each folder is listed once per batch rather than probed per task (almost halves a 20k cleanup).
        """

        def listing(folder: Path) -> set[str]:
            try:
                return set(os.listdir(folder))
            except FileNotFoundError:
                return set()

        def unlink(path: str) -> int:
            try:
                size = os.stat(path).st_size
                os.unlink(path)
                return size
            except FileNotFoundError:
                return 0
            except OSError as exc:  # a folder, a file held open on Windows: left for the next run
                logger.warning("cleanup could not delete %s: %s", path, exc)
                return 0

        root, logs_dir = str(self.paths.root), str(self.paths.logs_dir)
        logs, works = listing(self.paths.logs_dir), listing(self.paths.work_root / "tasks")
        freed = 0
        for record in records:
            task_id = record["task_id"]
            freed += unlink(os.path.join(root, self.paths.task_file(task_id).name))
            if f"{task_id}.log" in logs:
                freed += unlink(os.path.join(logs_dir, f"{task_id}.log"))
            for artifact in record.get("artifacts") or []:
                if (path := self.paths.removable(artifact)) is not None:
                    freed += unlink(str(path))
            if task_id in works:
                work = self.paths.work_dir(task_id)
                freed += sum(f.stat().st_size for f in work.rglob("*") if f.is_file())
                shutil.rmtree(work, ignore_errors=True)
        return freed

    def trim_logs(self, max_bytes: int) -> int:
        """Delete the oldest logs of ended tasks until the log folder holds at most ``max_bytes``."""
        logs = []
        total = 0
        for entry in os.scandir(self.paths.logs_dir):
            if entry.is_file() and entry.name.endswith(".log"):
                stat = entry.stat()
                logs.append((stat.st_mtime, stat.st_size, entry.name[:-4]))
                total += stat.st_size
        removed = 0
        for _, size, task_id in sorted(logs):
            if total <= max_bytes:
                break
            record = self._get(K_TASK + task_id) if is_task_id(task_id) else None
            if record is not None and not TaskStatus(record["status"]).terminal:
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.paths.logs_dir / f"{task_id}.log").unlink()
                total -= size
                removed += 1
        return removed

    def forget_dead_workers(self, older_than_seconds: float = 3600.0) -> None:
        limit = time.time() - older_than_seconds
        with self._transaction():
            for key, beat in self._range(K_WORKER):
                if beat.get("at", 0) < limit:
                    self.cache.delete(key)

    # --- rebuild from the JSON files -----------------------------------------------------

    def is_initialized(self) -> bool:
        return self.get_value(K_META + "initialized") is not None

    def rebuild(self) -> int:
        """Rebuild the cache index from the JSON files (the durable record); returns tasks loaded."""
        loaded: list[Task] = []
        for path in sorted(self.paths.root.glob("*.json")):
            if not is_task_id(path.stem):
                continue
            try:
                task = Task.from_dict(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                logger.error("rebuild: skipping unreadable task file %s: %s", path.name, exc)
                continue
            if task.task_id != path.stem:
                logger.error("rebuild: skipping %s: it holds task %s", path.name, task.task_id)
                continue
            loaded.append(task)
        self.import_tasks(loaded)
        self.set_value(K_META + "initialized", now_iso())
        return len(loaded)

    def import_tasks(self, tasks: list[Task], batch: int = 500) -> None:
        """Index task records in bulk, oldest first (ids already known are skipped; no files written)."""
        ordered = sorted(tasks, key=lambda t: t.task_id)
        for start in range(0, len(ordered), batch):
            with self._transaction():
                counters = self._counters()
                for task in ordered[start:start + batch]:
                    if self._load(task.task_id) is not None:
                        continue
                    if task.status is TaskStatus.QUEUED:
                        task.queue_key = self.cache.push(task.task_id, prefix=QUEUE_PREFIX)
                    task.rev -= 1  # _write adds one back
                    self._write(task, None, counters, file_current=True)
                self.cache.set(K_COUNTERS, counters.data)

    def ensure_index(self, owner: str, wait_seconds: float = 300.0) -> None:
        """Rebuild from JSON once if this cache is new; other processes wait for it."""
        if self.is_initialized():
            return
        with self._transaction():
            won = self.cache.add(K_META + "rebuild", {"owner": owner, "at": time.time()})
        if won:
            count = self.rebuild()
            logger.info("task index built from %d task files", count)
            return
        deadline = time.monotonic() + wait_seconds
        while not self.is_initialized():
            if time.monotonic() > deadline:
                raise StorageUnavailable("The task index is still being rebuilt by another process.")
            time.sleep(0.1)
