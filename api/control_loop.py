"""The runner's control loop: one thread per worker that heartbeats, flushes progress, delivers
stop requests, enforces timeouts and the stop grace period, fails tasks of dead workers, retries
ends the store refused, and starts queued tasks as slots free up."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from api.errors import StorageUnavailable
from api.task import TaskStatus
from api.workers import HUNG_AFTER_FACTOR

if TYPE_CHECKING:
    from api.runner import LocalTask, Runner

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1
PROGRESS_FLUSH_SECONDS = 0.5
DIRTY_SWEEP_SECONDS = 5.0


class ControlLoop:
    """The control thread's work on this worker's tasks (mixed into Runner)."""

    def _loop(self: Runner) -> None:
        last_beat = last_sweep = last_fill = 0.0
        while not self._closing.is_set() or self._has_tasks():
            try:
                now = time.monotonic()
                if now - last_beat >= self.settings.heartbeat_interval_seconds:
                    last_beat = now
                    with self._lock:
                        running = len(self._tasks)
                    self.store.heartbeat(self.worker, running=running, abandoned=self.abandoned)
                    self.store.reap_lost()
                if now - last_sweep >= DIRTY_SWEEP_SECONDS:
                    last_sweep = now
                    self.store.sweep_dirty()
                self._watch_tasks(now)
                self._retry_unrecorded()
                if not self._closing.is_set():
                    anywhere = now - last_fill >= TICK_SECONDS
                    if anywhere:
                        last_fill = now
                    self._start_queued(anywhere)
            except Exception:
                logger.exception("runner loop error (retrying)")
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            if self._closing.is_set() and not self._has_tasks():
                break

    def _has_tasks(self: Runner) -> bool:
        with self._lock:
            return bool(self._tasks) or bool(self._unrecorded)

    def _retry_unrecorded(self: Runner) -> None:
        with self._lock:
            pending = list(self._unrecorded.items())
        for task_id, record in pending:
            try:
                record()
            except StorageUnavailable:
                return
            with self._lock:
                self._unrecorded.pop(task_id, None)
            logger.info("task %s: its end is recorded", task_id)

    def _watch_tasks(self: Runner, now: float) -> None:
        with self._lock:
            local = list(self._tasks.values())
        if not local:
            return
        orders = self.store.control([item.task_id for item in local], self.worker.id)
        # Confirmed owner as of now: the steps may pass their checkpoints until the point where other
        # workers would declare this one lost (a process paused longer finds it expired at once).
        owned_until = time.monotonic() + HUNG_AFTER_FACTOR * self.settings.worker_lost_after_seconds
        for item in local:
            if orders.get(item.task_id) is None:
                item.context.owned_until = owned_until
            context = item.context
            order = orders.get(item.task_id)
            if order == "lost" and not item.ending:
                # Fencing: another process declared this worker lost and ended the task (this
                # process was paused or cut off). The step must not run on; its end is not recorded.
                logger.warning("task %s: no longer owned by this worker; aborting the step", item.task_id)
                context.request_stop("lost")
                with self._lock:
                    self._tasks.pop(item.task_id, None)
                continue
            if order == "stop" and not context.stop_event.is_set():
                logger.info("task %s: stop requested; telling the step", item.task_id)
                context.request_stop("request")
            if not context.stop_event.is_set() and now - item.started > self.settings.task_timeout_seconds:
                logger.warning("task %s: timed out; stopping it", item.task_id)
                context.request_stop("timeout")
            if context.stop_event.is_set():
                item.stop_seen = item.stop_seen or now
                if now - item.stop_seen > self.settings.stop_grace_seconds and context.stop_reason != "shutdown":
                    self._abandon(item)
                    continue
            if context.changed.is_set() and not item.ending and now - item.last_flush >= PROGRESS_FLUSH_SECONDS:
                context.changed.clear()
                item.last_flush = now
                self.store.save_progress(item.task_id, context.progress, context.message, list(context.log_tail),
                                         context.log_lines, list(context.artifacts), owner=self.worker.id)

    def _abandon(self: Runner, item: LocalTask) -> None:
        """The step ignored the stop for the whole grace period: end the task, leave the thread."""
        grace = self.settings.stop_grace_seconds
        if item.context.stop_reason == "timeout":
            reason = f"the step ran longer than {self.settings.task_timeout_seconds:g} s and ignored the stop for {grace:g} s"
            self.store.finish(item.task_id, TaskStatus.FAILED, reason, owner=self.worker.id,
                              error={"type": "Timeout", "message": reason, "traceback": None})
        else:
            reason = f"the step did not stop within {grace:g} s; its thread was abandoned"
            self.store.finish(item.task_id, TaskStatus.STOPPED, reason, owner=self.worker.id)
        logger.warning("task %s: %s", item.task_id, reason)
        with self._lock:
            self._tasks.pop(item.task_id, None)
            self.abandoned += 1
            self.freed += 1
        self._wake.set()

    def _start_queued(self: Runner, anywhere: bool) -> None:
        """Start queued tasks in the slots this worker freed since the last pass, and on a tick
        in any free slot. Woken at once by its own ends, a worker would otherwise also take the
        slots other workers just freed, and soon run every task alone on one GIL."""
        with self._lock:
            budget, self.freed = self.freed, 0
        while not self._closing.is_set() and (anywhere or budget > 0):
            task = self.store.claim_next(self.worker)
            if task is None:
                return
            budget -= 1
            logger.info("task %s: starting from the queue", task.task_id)
            self.launch(task)
