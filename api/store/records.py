"""Task records in the local store: reading one, storing one with its status and step indexes,
counters and change feed in step, and bringing its JSON file up to date after the commit."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from api.errors import TaskNotFound
from api.store.cachedb import put, remove
from api.store.counters import Counters
from api.store.keys import (
    K_COUNTERS,
    K_DIRTY,
    K_EXPIRES,
    K_STATUS,
    K_STEP,
    K_STOP,
    K_TASK,
)
from api.task import Task, TaskStatus, is_task_id, parse_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore

# A queued or running state's file is written this long after the change, unless the task ends
# first: then only the ended state is written. A no-op task's two writes (with their fsyncs)
# were a quarter of its cost.
FILE_SETTLE_SECONDS = 0.05


class Records:
    """get, update and the writes every verb shares (mixed into TaskStore)."""

    def get(self: TaskStore, task_id: str) -> Task:
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

    def _load(self: TaskStore, task_id: str) -> Task | None:
        data = self._get(K_TASK + task_id)
        return Task.from_dict(data) if data is not None else None

    def _counters(self: TaskStore) -> Counters:
        return Counters(self.cache.get(K_COUNTERS))

    def _save_counters(self: TaskStore, counters: Counters) -> None:
        put(self.cache, K_COUNTERS, counters.data)

    def _write(self: TaskStore, task: Task, previous: TaskStatus | None, counters: Counters | None = None,
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

    def _index_move(self: TaskStore, task: Task, previous: TaskStatus | None, counters: Counters) -> None:
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

    def _sync_file(self: TaskStore, task: Task) -> None:
        """After a committed change: bring the JSON file up to date (on the writer thread if there
        is one, else now) and wake this process's long-polls."""
        task_id = task.task_id
        self.watch.changed(task_id)
        if self._writer is not None:
            self._writer.enqueue(task_id, 0.0 if task.status.terminal else FILE_SETTLE_SECONDS)
        elif self.write_file(task_id) is not None:
            with self._transaction():
                self.cache.delete(K_DIRTY + task_id)

    def update(self: TaskStore, task_id: str, change: Callable[[Task], bool]) -> Task | None:
        """Apply ``change`` to the task in one transaction (it returns False to leave it as is),
        committed together with the other threads' changes of the moment."""

        def apply() -> tuple[Task | None, bool]:
            task = self._load(task_id)
            if task is None:
                return None, False
            previous, history_before = task.status, len(task.history)
            if not change(task):
                return task, False
            self._write(task, previous, history_before=history_before)
            return task, True

        task, changed = self._grouped(apply)
        if changed:
            self._sync_file(task)
        return task
