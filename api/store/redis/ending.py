"""Ending, stopping and progress of tasks in Redis, fenced by the owner's lease, and the reaper of
lost workers and lost dispatches (mixed into RedisStore)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from api.errors import StorageUnavailable, TaskNotFound
from api.store.redis import records as R
from api.store.redis.errors import translated as _translated
from api.task import Task, TaskStatus, now_iso

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore

logger = logging.getLogger(__name__)

COMMIT_RETRIES = 50


class RedisEnding:
    """finish, request_stop, save_progress and reap_lost (mixed into RedisStore)."""

    # --- ending, stopping, progress --------------------------------------------------------

    @_translated
    def finish(self: RedisStore, task_id: str, status: TaskStatus, reason: str, *, result: Any = None,
               error: dict[str, Any] | None = None, extra: Callable[[Task], None] | None = None,
               owner: str | None = None, guard: str | None = None) -> Task | None:
        """Move a task to a terminal state while ``owner`` still owns it (fencing)."""

        ops: list = []

        def change(task: Task) -> bool:
            if task.status.terminal:
                return False
            ops.clear()
            if extra:
                extra(task)
            if task.parent_id:
                ops.append(["notify", task.parent_id])  # its pipeline moves on now (wait_pipeline_news)
            if status is TaskStatus.FAILED and self._failing(task, reason, error, ops):
                return True  # it waits for its next attempt (retry policy)
            task.result, task.error, task.message = result, error, reason
            task.transition(status, reason, self.ttl_seconds)
            return True

        kind = guard or ("owner" if owner is not None else "")
        task, _ = self._commit(task_id, change, guard=kind, value=owner or "", ops=ops)
        return task

    @_translated
    def request_stop(self: RedisStore, task_id: str, by: dict[str, Any] | None) -> Task:
        """Stop a queued or dispatched task now, or flag a running one for its owner."""
        self.get(task_id)
        for _ in range(COMMIT_RETRIES):
            task = self._load(task_id)
            if task is None:
                raise TaskNotFound()
            if task.status is TaskStatus.QUEUED or (task.status is TaskStatus.RUNNING and not task.worker
                                                    and task.pipeline is None):
                queued = task.status is TaskStatus.QUEUED

                def stop_now(t: Task, queued: bool = queued) -> bool:
                    if t.status.terminal or t.worker:
                        return False
                    t.stopped_by, t.stop_requested = by, True
                    t.message = "stopped before it started"
                    t.transition(TaskStatus.STOPPED, "stop requested while queued" if queued
                                 else "stop requested before a worker started it", self.ttl_seconds)
                    return True

                done_task, done = self._commit(task_id, stop_now, guard="" if queued else "unclaimed",
                                               flags="Q" if queued else "")
                if done or (done_task is not None and done_task.status.terminal):
                    return done_task
                continue
            if task.status is TaskStatus.RUNNING and not task.stop_requested:

                def flag(t: Task) -> bool:
                    if t.status is not TaskStatus.RUNNING or t.stop_requested:
                        return False
                    t.stop_requested, t.stopped_by, t.message = True, by, "stop requested"
                    t.history.append({"status": t.status.value, "at": now_iso(), "reason": "stop requested"})
                    return True

                # A pipeline task has no owner to poll the flag: its planner stops the nodes.
                done_task, _ = self._commit(task_id, flag, flags="" if task.pipeline is not None else "S",
                                            stop={"at": time.time(), "by": by})
                return done_task
            return task
        raise StorageUnavailable("The task changed too often to be stopped; retry.")

    @_translated
    def save_progress(self: RedisStore, task_id: str, progress: float, message: str, log_tail: list[str],
                      log_lines: int, artifacts: list[str], owner: str | None = None) -> None:
        def change(task: Task) -> bool:
            if task.status is not TaskStatus.RUNNING:
                return False
            task.progress, task.message, task.log_tail = progress, message, log_tail
            task.log_lines, task.artifacts = log_lines, artifacts
            return True

        self._commit(task_id, change, guard="owner" if owner else "", value=owner or "")

    # --- lost workers and lost dispatches -------------------------------------------------

    @_translated
    def redis_uptime_seconds(self) -> float:
        return float(self.r.info("server")["uptime_in_seconds"])

    @_translated
    def reap_lost(self: RedisStore, only_pid: int | None = None) -> list[str]:
        """Fail tasks whose owner's lease ran out (WorkerLost); dispatch unclaimed ones again.

        Only once Redis has been up longer than two lease periods: after a Redis restart the
        workers need that long to renew, and an old score must not read as a dead worker.
        """
        if only_pid is not None:
            return []  # API processes own no tasks in this mode (Gunicorn's child_exit)
        if self.redis_uptime_seconds() <= 2 * self.lease_seconds:
            return []
        seconds, micros = self.r.time()
        now_ms = seconds * 1000 + micros // 1000
        lost = []
        for task_id in self.r.zrangebyscore(R.K_RUNNING, "-inf", now_ms, start=0, num=500):
            owner = self.r.hget(R.K_RUN + task_id, "owner") or ""
            if not owner:
                token = self._run("REDISPATCH", task_id, int(self.dispatch_seconds * 1000))
                if token:
                    logger.warning("task %s: no worker took it in %.0f s; dispatching it again",
                                   task_id, self.dispatch_seconds)
                    self._dispatch(task_id, token)
                continue
            reason = f"worker {owner} stopped renewing its lease while running the task"
            task = self.finish(task_id, TaskStatus.FAILED, reason, owner=owner, guard="expired",
                               error={"type": "WorkerLost", "message": reason, "traceback": None})
            if task is not None and task.error and task.error.get("type") == "WorkerLost":
                logger.warning("task %s: %s", task_id, reason)
                lost.append(task_id)
        return lost
