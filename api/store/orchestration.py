"""Shared state of the orchestration layer: pipeline tasks and their nodes, retries waiting for their
time, and dead letters (concurrency keys: resources.py; schedules: schedules.py).

The policies (which node starts next, how long a retry waits, when a schedule fires) live in
``api/orchestration``; these verbs only apply them inside one store transaction, so every worker
sees one truth and a second backend needs the same verbs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from api.store.keys import K_DEAD, K_DUE, K_KEY_HELD, K_KEY_WAIT, K_STATUS, QUEUE_PREFIX
from api.task import Task, TaskStatus, now_iso, parse_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore
    from api.workers import WorkerInfo

logger = logging.getLogger(__name__)


@dataclass
class PipelineStep:
    """What a pipeline's planner decided in one look at its nodes."""

    submit: list[Task] = field(default_factory=list)  # child tasks to admit now
    stop: list[str] = field(default_factory=list)  # child task ids to stop
    end: tuple[TaskStatus, str] | None = None  # the pipeline task's final state and reason


def _due_key(due: float, task_id: str) -> str:
    return f"{K_DUE}{int(due * 1000):015d}:{task_id}"


def resolve_dead(task: Task, how: str, record: dict[str, Any]) -> None:
    """Record on the task how its dead letter was resolved ("dismissed" or "retried": who, when, new id)."""
    if task.dead_letter is None:
        task.dead_letter = {}
    task.dead_letter[how] = record
    if how == "retried":
        task.retried_as = record


def retry_delay(decider: Callable[[Task, dict[str, Any]], float | None] | None, task: Task,
                error: dict[str, Any] | None) -> float | None:
    """Seconds until a failing task's next attempt, or None (no policy, not retryable, or a policy
    that cannot decide: that must never keep the task from ending)."""
    try:
        return decider(task, error) if decider is not None and error else None
    except Exception:
        logger.exception("task %s: its retry policy failed; no retry", task.task_id)
        return None


def wait_for_retry(task: Task, reason: str, error: dict[str, Any], delay: float, ttl_seconds: float) -> float:
    """Record the failed attempt and put the task back to ``queued`` until its next one (both
    stores); returns the epoch second it is due."""
    now = time.time()
    worker = task.worker or {}
    task.attempts.append({"attempt": task.attempt, "started_at": task.started_at, "ended_at": now_iso(now),
                          "worker": f"{worker.get('host')}:{worker.get('pid')}" if worker else None,
                          "error": {k: v for k, v in error.items() if k != "traceback"}})
    failed_attempt = task.attempt
    task.attempt += 1
    due = now + delay
    task.retry_due = now_iso(due)
    task.worker = None
    task.started_at = None
    task.progress = 0.0
    task.queue_key = None
    limit = (task.retry or {}).get("max_attempts")
    task.message = f"attempt {failed_attempt} failed ({error['type']}); attempt {task.attempt} at {task.retry_due}"
    task.transition(TaskStatus.QUEUED, f"attempt {failed_attempt} failed with {error['type']}: {reason}; "
                    f"attempt {task.attempt} of {limit} in {delay:.1f} s (no slot held while waiting)", ttl_seconds)
    return due


class Orchestration:
    """Pipelines, retries, dead letters and schedules (mixed into TaskStore)."""

    # --- retries and dead letters (inside finish's transaction) ----------------------------

    def _retry_or_list(self: TaskStore, task: Task, reason: str, error: dict[str, Any] | None) -> bool:
        """A failing task: True if it was put back to wait for its next attempt; otherwise it is
        listed as a dead letter (unless a pipeline owns it) and the caller fails it."""
        delay = retry_delay(self.retry_decider, task, error)
        if delay is None:
            self._list_dead(task, error)
            return False
        self._mark_key(K_KEY_HELD, task, False)
        due = wait_for_retry(task, reason, error, delay, self.ttl_seconds)
        self.cache.set(_due_key(due, task.task_id), "")
        return True

    def _await_retry(self: TaskStore, task: Task) -> None:
        self.cache.set(_due_key(parse_iso(task.retry_due), task.task_id), "")

    def _list_dead(self: TaskStore, task: Task, error: dict[str, Any] | None) -> None:
        if task.parent_id is not None:
            return  # a node's failure is its pipeline's: the pipeline task is the dead letter
        task.dead_letter = {"listed_at": now_iso()}
        self.cache.set(K_DEAD + task.task_id, {"at": time.time(), "step": task.step_name,
                                               "error_type": (error or {}).get("type")})

    def release_due(self: TaskStore, limit: int = 200) -> list[str]:
        """Put retries whose time has come at the back of the queue; returns their ids."""
        rows = self._range(K_DUE, before=f"{int(time.time() * 1000):015d};", limit=limit)
        if not rows:
            return []
        released = []
        with self._transaction():
            for key, _ in rows:
                if not self.cache.delete(key):
                    continue  # another worker released it
                task = self._load(key.rsplit(":", 1)[1])
                if task is None or task.status is not TaskStatus.QUEUED or task.retry_due is None:
                    continue
                history_before = len(task.history)
                task.retry_due = None
                task.queue_key = self.cache.push(task.task_id, prefix=QUEUE_PREFIX)
                self._mark_key(K_KEY_WAIT, task, True)
                task.message = f"attempt {task.attempt}: waiting for a free slot"
                task.history.append({"status": task.status.value, "at": now_iso(),
                                     "reason": f"attempt {task.attempt} joined the queue"})
                self._write(task, TaskStatus.QUEUED, history_before=history_before)
                released.append(task)
        for task in released:
            self._sync_file(task)
        return [t.task_id for t in released]

    def waiting_retries(self: TaskStore) -> int:
        return self._count(K_DUE)

    def is_dead_letter(self: TaskStore, task_id: str) -> bool:
        return self._get(K_DEAD + task_id) is not None

    def dead_letter_count(self: TaskStore) -> int:
        return self._count(K_DEAD)

    def dead_letters(self: TaskStore, limit: int = 100) -> list[Task]:
        """Tasks that failed after their last attempt and nobody retried or dismissed, newest first."""
        found = []
        for key, _ in self._range(K_DEAD, newest_first=True, limit=limit):
            task = self._load(key[len(K_DEAD):])
            if task is not None and not task.expired():
                found.append(task)
        return found

    def resolve_dead_letter(self: TaskStore, task_id: str, how: str, record: dict[str, Any]) -> Task | None:
        """Take a task off the dead letters: ``how`` is "dismissed" or "retried" (record: who, when, new id)."""

        def change(task: Task) -> bool:
            self.cache.delete(K_DEAD + task_id)
            resolve_dead(task, how, record)
            return True

        return self.update(task_id, change)

    # --- pipelines ---------------------------------------------------------------------------

    def start_pipeline(self: TaskStore, parent: Task) -> Task:
        """Store a new pipeline task as running (it runs no thread and holds no slot: its nodes do)."""
        with self._transaction():
            parent.history.append({"status": TaskStatus.QUEUED.value, "at": now_iso(), "reason": "accepted"})
            parent.message = "pipeline started"
            parent.transition(TaskStatus.RUNNING, "pipeline started: its nodes start as their dependencies end",
                              self.ttl_seconds)
            self._write(parent, None)
        self._sync_file(parent)
        return parent

    def running_pipelines(self: TaskStore) -> list[str]:
        return [key.rsplit(":", 1)[1] for key, index in self._range(f"{K_STATUS}running:") if index.get("pipeline")]

    def advance_pipeline(self: TaskStore, parent_id: str, plan: Callable[[Task, dict[str, Task]], PipelineStep],
                         worker: WorkerInfo, starts_here: bool = True) -> tuple[Task | None, list[Task]]:
        """Look at a pipeline's nodes and act on ``plan``'s decision in one transaction.

        Returns the pipeline task and the children admitted as running on ``worker`` (the caller
        starts their threads). Two workers advancing the same pipeline take turns on the write
        lock, and each sees the other's children, so no node is submitted twice. ``starts_here``
        False (a worker shutting down): new children wait in the queue for the other workers.
        """
        alive = self.alive_workers()
        changed: list[Task] = []
        started: list[Task] = []
        with self._transaction():
            parent = self._load(parent_id)
            if parent is None or parent.status.terminal or parent.pipeline is None:
                return parent, []
            children = {}
            for name, node in parent.pipeline["nodes"].items():
                child = self._load(node["task_id"]) if node.get("task_id") else None
                if child is not None:
                    children[name] = child
            before = repr(parent.pipeline)
            history_before = len(parent.history)
            decision = plan(parent, children)
            for child in decision.submit:
                self._admit_new(child, worker, alive, accepted=True, starts_here=starts_here)
                changed.append(child)
                if child.status is TaskStatus.RUNNING:
                    started.append(child)
            if decision.end is not None:
                status, reason = decision.end
                parent.message = reason
                if status is TaskStatus.FAILED:
                    parent.error = {"type": "PipelineFailed", "message": reason, "traceback": None}
                    self._list_dead(parent, parent.error)
                parent.transition(status, reason, self.ttl_seconds)
            if decision.end is not None or decision.submit or repr(parent.pipeline) != before:
                self._write(parent, TaskStatus.RUNNING, history_before=history_before)
                changed.append(parent)
        for task in changed:
            self._sync_file(task)
        for task_id in decision.stop:
            self.request_stop(task_id, parent.stopped_by)
        return parent, started
