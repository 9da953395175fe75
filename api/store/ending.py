"""Ending, stopping and progress of tasks in the local store, fenced by the owner's id."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from api.errors import TaskNotFound
from api.store.cachedb import put
from api.store.keys import K_KEY_HELD, K_KEY_WAIT, K_STATUS, K_STOP
from api.task import Task, TaskStatus, now_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore


class Ending:
    """finish, request_stop, control and save_progress (mixed into TaskStore)."""

    def finish(self: TaskStore, task_id: str, status: TaskStatus, reason: str, *, result: Any = None,
               error: dict[str, Any] | None = None, extra: Callable[[Task], None] | None = None,
               owner: str | None = None) -> Task | None:
        """Move a task to a terminal state; a task already ended is left as it is.

        ``owner``: the worker id that runs the task. Its outcome is recorded only while it still
        owns the task (a fencing check): a worker declared lost cannot overwrite the verdict.
        """

        def change(task: Task) -> bool:
            if task.status.terminal or (owner is not None and not self._owns(task, owner)):
                return False
            if extra:
                extra(task)
            self._mark_key(K_KEY_WAIT, task, False)
            if status is TaskStatus.FAILED and self._retry_or_list(task, reason, error):
                return True
            task.result = result
            task.error = error
            task.message = reason
            self._mark_key(K_KEY_HELD, task, False)
            task.transition(status, reason, self.ttl_seconds)
            return True

        return self.update(task_id, change)

    @staticmethod
    def _owns(task: Task, owner: str) -> bool:
        return task.status is TaskStatus.RUNNING and bool(task.worker) and task.worker.get("id") == owner

    def request_stop(self: TaskStore, task_id: str, by: dict[str, Any] | None) -> Task:
        """Stop a queued task now, or flag a running one for its owner; ended tasks are unchanged."""
        self.get(task_id)

        def change(task: Task) -> bool:
            if task.status is TaskStatus.QUEUED:
                if task.queue_key:
                    self.cache.delete(task.queue_key)
                self._mark_key(K_KEY_WAIT, task, False)
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
                put(self.cache, K_STOP + task_id, {"at": time.time(), "by": by})
                return True
            return False

        task = self.update(task_id, change)
        if task is None:
            raise TaskNotFound()
        return task

    def control(self: TaskStore, task_ids: list[str], owner: str) -> dict[str, str]:
        """What the owner of ``task_ids`` must do: ``"stop"`` (a stop is pending) or ``"lost"``
        (the task is no longer running under this owner: declared lost, or removed)."""
        orders: dict[str, str] = {}
        for task_id in task_ids:
            index = self._get(f"{K_STATUS}running:{task_id}")
            if index is None or index.get("owner") != owner:
                orders[task_id] = "lost"
            elif self._get(K_STOP + task_id) is not None:
                orders[task_id] = "stop"
        return orders

    def save_progress(self: TaskStore, task_id: str, progress: float, message: str, log_tail: list[str],
                      log_lines: int, artifacts: list[str], owner: str | None = None) -> None:
        def change(task: Task) -> bool:
            if task.status is not TaskStatus.RUNNING or (owner is not None and not self._owns(task, owner)):
                return False
            task.progress, task.message, task.log_tail = progress, message, log_tail
            task.log_lines, task.artifacts = log_lines, artifacts
            return True

        self.update(task_id, change)
