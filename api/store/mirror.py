"""The durable record: one JSON file per task, kept in step with the cache, and the index rebuilt from them."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from api.errors import StorageUnavailable
from api.store.files import FileWriter, write_json_atomic
from api.store.keys import K_DIRTY, K_FIRED, K_KEY_WAIT, K_META, K_TASK, QUEUE_PREFIX
from api.task import Task, TaskStatus, is_task_id, now_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore

logger = logging.getLogger(__name__)

# A rebuild claim older than this without renewal belongs to a process that died while rebuilding.
REBUILD_CLAIM_SECONDS = 15.0
# Bad task files named in the health report (the log names every one).
BAD_FILES_REPORTED = 20


class TaskFiles:
    """The JSON-file half of the local store (mixed into TaskStore)."""

    def write_file(self: TaskStore, task_id: str) -> int | None:
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

    def _files_written(self: TaskStore, written: dict[str, int]) -> None:
        self._files_done.update(written)

    def start_file_writer(self: TaskStore) -> None:
        self._writer = FileWriter(self.write_file, self._files_written)
        self._writer.start()

    def flush_files(self: TaskStore, timeout: float = 10.0) -> bool:
        """Write every pending task file now (tests and shutdown)."""
        return self._writer.flush(timeout) if self._writer is not None else True

    def sweep_dirty(self: TaskStore, older_than_seconds: float = 5.0, orphaned_after_seconds: float = 30.0,
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

    def dirty_count(self: TaskStore) -> int:
        """How many task files lag behind the cache (written soon by their worker or a sweep)."""
        return self._count(K_DIRTY)

    # --- rebuild from the JSON files -----------------------------------------------------

    def is_initialized(self: TaskStore) -> bool:
        return self._get(K_META + "initialized") is not None

    def bad_files(self: TaskStore) -> list[dict[str, Any]]:
        """Task files the last rebuild skipped (name and reason), for /health."""
        return self._get(K_META + "bad_files") or []

    def rebuild(self: TaskStore, renew: Any = None) -> int:
        """Rebuild the cache index from the JSON files (the durable record); returns tasks loaded.

        A file that is not a task record is skipped and reported (log and /health), never fatal.
        """
        loaded: list[Task] = []
        bad: list[dict[str, Any]] = []
        for number, path in enumerate(sorted(self.paths.root.glob("*.json"))):
            if renew is not None and number % 1000 == 999:
                renew()
            if not is_task_id(path.stem):
                continue
            try:
                task = Task.from_file(json.loads(path.read_text(encoding="utf-8")))
                if task.task_id != path.stem:
                    raise ValueError(f"it holds task {task.task_id}")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:300]
                logger.error("rebuild: skipping task file %s: %s", path.name, reason)
                bad.append({"file": path.name, "reason": reason})
                continue
            loaded.append(task)
        self.import_tasks(loaded, renew=renew)
        self.import_schedules()
        with self._transaction():
            self.cache.set(K_META + "bad_files", bad[:BAD_FILES_REPORTED] + (
                [{"file": f"... and {len(bad) - BAD_FILES_REPORTED} more", "reason": "see the server log"}]
                if len(bad) > BAD_FILES_REPORTED else []))
            self.cache.set(K_META + "initialized", now_iso())
        return len(loaded)

    def import_tasks(self: TaskStore, tasks: list[Task], batch: int = 500, renew: Any = None) -> None:
        """Index task records in bulk, oldest first (ids already known are skipped; no files written)."""
        ordered = sorted(tasks, key=lambda t: t.task_id)
        for start in range(0, len(ordered), batch):
            if renew is not None:
                renew()
            chunk = ordered[start:start + batch]
            try:
                self._import_batch(chunk)
            except (KeyError, TypeError, ValueError, AttributeError):
                # One record the checks let through broke the batch (rolled back): import one by one
                # and leave out, with a log line, only the records that cannot be indexed.
                for task in chunk:
                    try:
                        self._import_batch([task])
                    except (KeyError, TypeError, ValueError, AttributeError) as exc:
                        logger.error("rebuild: skipping task %s: %s: %s", task.task_id, type(exc).__name__, exc)

    def _import_batch(self: TaskStore, tasks: list[Task]) -> None:
        with self._transaction():
            counters = self._counters()
            for task in tasks:
                if self._load(task.task_id) is not None:
                    continue
                if task.status is TaskStatus.QUEUED and task.retry_due:
                    self._await_retry(task)  # a retry waiting for its time keeps waiting
                elif task.status is TaskStatus.QUEUED:
                    task.queue_key = self.cache.push(task.task_id, prefix=QUEUE_PREFIX)
                    self._mark_key(K_KEY_WAIT, task, True)
                task.rev -= 1  # _write adds one back
                self._write(task, None, counters, file_current=True)
                if task.idempotency_key and task.idempotency_fingerprint:
                    self._remember_idempotency(task)
                origin = task.schedule or {}
                if origin.get("schedule_id") and origin.get("occurrence"):
                    # A fired occurrence stays fired: its task file says so.
                    self.cache.set(f"{K_FIRED}{origin['schedule_id']}:{origin['occurrence']}", task.task_id)
            self._save_counters(counters)

    def ensure_index(self: TaskStore, owner: str, wait_seconds: float = 300.0) -> None:
        """Rebuild from JSON once if this cache is new; other processes wait for it.

        The rebuild claim is a lease renewed while the rebuild runs: a process killed mid-rebuild
        leaves a claim that expires, and the next process takes it over and rebuilds.
        """
        deadline = time.monotonic() + wait_seconds
        while not self.is_initialized():
            if self._claim_rebuild(owner):
                try:
                    count = self.rebuild(renew=lambda: self._claim_rebuild(owner))
                finally:
                    with self._transaction():
                        claim = self.cache.get(K_META + "rebuild")
                        if claim is not None and claim["owner"] == owner:
                            self.cache.delete(K_META + "rebuild")
                logger.info("task index built from %d task files", count)
                return
            if time.monotonic() > deadline:
                raise StorageUnavailable("The task index is still being rebuilt by another process.")
            time.sleep(0.1)

    def _claim_rebuild(self: TaskStore, owner: str) -> bool:
        with self._transaction():
            claim = self.cache.get(K_META + "rebuild")
            now = time.time()
            if claim is not None and claim["owner"] != owner and claim.get("expires", 0) > now:
                return False
            self.cache.set(K_META + "rebuild", {"owner": owner, "at": now, "expires": now + REBUILD_CLAIM_SECONDS})
            return True
