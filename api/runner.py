"""Runs tasks in threads of this worker process, and keeps the worker's side of the shared rules.

One control thread per worker: heartbeats, flushes progress, delivers stop requests, enforces
timeouts and the stop grace period, fails tasks of dead workers, and starts queued tasks as
slots free up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from api.errors import ApiError, ShuttingDown, StorageUnavailable
from api.orchestration.policies import StepPolicies
from api.settings import Settings
from api.store import TaskStore
from api.workers import HUNG_AFTER_FACTOR, WorkerInfo
from api.task import Task, TaskStatus, new_task_id, now_iso
from etl import registry, runtime, secrets
from etl.errors import StepStopped

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.1
PROGRESS_FLUSH_SECONDS = 0.5
DIRTY_SWEEP_SECONDS = 5.0
SWITCH_INTERVAL_SECONDS = 0.001
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Task threads of this process: ended so far, and running now (the Gunicorn worker's memory trim
# in gunicorn.conf.py looks at both).
_ended_here = 0
_running_here = 0


def task_threads_here() -> tuple[int, int]:
    """(ended so far, running now) task threads of this process."""
    return _ended_here, _running_here


@dataclass
class LocalTask:
    """A task whose thread runs in this process."""

    task_id: str
    context: runtime.TaskContext
    done: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    stop_seen: float | None = None
    # The first progress flush comes a flush period after the start: a short task's progress is
    # recorded once, with its end, instead of costing a write transaction of its own.
    last_flush: float = field(default_factory=time.monotonic)
    ending: bool = False  # the step returned; its end is being recorded


class _TaskThreads:
    """Daemon threads that run task bodies. An idle thread is reused, so starting a task does not
    wait for a new thread to boot; a thread abandoned by a stubborn step is simply never idle again."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def run(self, name: str, job: Callable[[], None]) -> None:
        with self._lock:
            reuse = self._idle > 0
            if reuse:
                self._idle -= 1
        if reuse:
            self._jobs.put((name, job))
        else:
            threading.Thread(target=self._serve, args=(name, job), name=name, daemon=True).start()

    def _serve(self, name: str, job: Callable[[], None]) -> None:
        while True:
            threading.current_thread().name = name
            try:
                job()
            except Exception:
                logger.exception("task thread error")
            threading.current_thread().name = "task-idle"
            with self._lock:
                self._idle += 1
            name, job = self._jobs.get()


def execute_step(task: Task, context: runtime.TaskContext, timeout_seconds: float, host: str,
                 worker_id: str = "") -> tuple[TaskStatus, str, Any, dict[str, Any] | None]:
    """Run the task's step in this thread, bound to ``context``: (status, reason, result, error).

    The one place that turns a step's return or exception into a task outcome, for the local
    runner's threads and the scale-out worker hosts alike. ``host`` names what may shut down.
    """
    status, reason, result, error = TaskStatus.FAILED, "", None, None
    with runtime.bind(context):
        logger.info("task %s: step %s started on %s", task.task_id, task.step_name, worker_id)
        try:
            step = registry.get_step(task.step_name, include_diagnostic=True)
            # ${secret:name} references are resolved here, in the task's thread, never stored: only in
            # fields declared to carry them, after validation, so no validation error can quote a secret.
            params = secrets.resolve_declared(step.params_model.model_validate(task.params))
            result = step.run(params)
            status, reason = TaskStatus.COMPLETED, "the step finished"
        except StepStopped as exc:
            if context.stop_reason == "timeout":
                reason = f"the step ran longer than {timeout_seconds:g} s"
                error = {"type": "Timeout", "message": reason, "traceback": None}
            elif context.stop_reason == "shutdown":
                status, reason = TaskStatus.STOPPED, f"stopped because the {host} shut down"
            elif context.stop_reason == "lost":
                # Fenced: the store refuses this end, the verdict of the worker that declared us lost stands.
                logger.warning("task %s: no longer owned by this worker; the step stopped at a checkpoint",
                               task.task_id)
                status, reason = TaskStatus.STOPPED, "this worker no longer owns the task"
            else:
                status, reason = TaskStatus.STOPPED, f"stopped on request ({exc})"
        except Exception as exc:
            reason = f"the step raised {type(exc).__name__}"
            error = {"type": type(exc).__name__, "message": secrets.mask_text(str(exc)),
                     "traceback": secrets.mask_text(traceback.format_exc()),
                     # the class and its bases: a retry policy may name a base (TransientError)
                     "kinds": [c.__name__ for c in type(exc).__mro__ if c not in (object, BaseException, Exception)]}
            logger.error("task %s: %s: %s", task.task_id, type(exc).__name__, error["message"])
        logger.info("task %s: %s", task.task_id, status.value)
    return status, reason, result, error


class Runner:
    """This worker's task threads and control loop."""

    def __init__(self, store: TaskStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.worker = WorkerInfo.this_process()
        self._tasks: dict[str, LocalTask] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._threads = _TaskThreads()
        self._unrecorded: dict[str, Callable[[], None]] = {}  # ends the store refused (disk full): retried
        self._log_handler = runtime.TaskLogHandler()
        self._log_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.abandoned = 0
        # Called with each task this worker ended (pipelines advance at once when a node ends).
        self.on_task_end: Callable[[Task], None] | None = None
        self.policies = StepPolicies(settings.step_policies_file)

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        # Task threads, the file writer and the event loop share the GIL; every SQLite call drops
        # and retakes it. At the default 5 ms switch interval a busy event loop made each retake
        # wait up to 5 ms, so a no-op task took ~20 ms end to end.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        logging.getLogger().addHandler(self._log_handler)
        etl_logger = logging.getLogger("etl")
        if etl_logger.getEffectiveLevel() > logging.INFO:
            etl_logger.setLevel(logging.INFO)  # task logs keep INFO lines whatever the server log level
        self.store.start_file_writer()
        self.store.heartbeat(self.worker, started_at=now_iso(), running=0)
        self._loop_thread = threading.Thread(target=self._loop, name="etl-runner", daemon=True)
        self._loop_thread.start()
        logger.info("worker %s ready", self.worker.id)

    @property
    def alive(self) -> bool:
        return self._loop_thread is not None and self._loop_thread.is_alive()

    def shutdown(self, wait_seconds: float) -> None:
        """Stop taking tasks, ask running ones to stop, wait, and record what was interrupted."""
        self._closing.set()
        with self._lock:
            local = list(self._tasks.values())
        for item in local:
            item.context.request_stop("shutdown")
        deadline = time.monotonic() + wait_seconds
        for item in local:
            item.done.wait(max(0.0, deadline - time.monotonic()))
        for item in local:
            if not item.done.is_set():
                reason = "the worker shut down before the step finished"
                self.store.finish(item.task_id, TaskStatus.FAILED, reason, owner=self.worker.id,
                                  error={"type": "WorkerLost", "message": reason, "traceback": None})
                logger.warning("task %s: interrupted by shutdown", item.task_id)
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join(2)
        logging.getLogger().removeHandler(self._log_handler)
        self.store.forget_worker(self.worker)
        logger.info("worker %s stopped (%d task(s) interrupted)", self.worker.id, len(local))

    # --- submitting ----------------------------------------------------------------------

    def submit(self, step_name: str, params: BaseModel, body: dict[str, Any],
               requested_by: dict[str, Any] | None, idempotency: tuple[str, str] | None,
               rate: tuple[str, float] | None = None, wait: bool = True) -> tuple[Task, bool]:
        """Admit a task for ``step_name`` (already validated); returns (task, replayed).

        ``wait=False``: StoreBusy rather than waiting for the store's write lock (event loop callers).
        """
        if self._closing.is_set():
            raise ShuttingDown()
        task = self.build_task(step_name, params, body, requested_by)
        task, replayed = self.store.submit(task, self.worker, idempotency, rate, wait=wait)
        if not replayed:
            if task.status is TaskStatus.RUNNING:
                self.launch(task)
            else:
                self._wake.set()
        return task, replayed

    def submit_group(self, requests: list[tuple[str, BaseModel, dict[str, Any], dict[str, Any] | None,
                                          tuple[str, str] | None, tuple[str, float] | None]]
                     ) -> list[tuple[Task, bool] | ApiError]:
        """``submit`` for several requests (the arguments of each, in order) in one store
        transaction; each answer is (task, replayed) or the ApiError refusing that request."""
        if self._closing.is_set():
            return [ShuttingDown() for _ in requests]
        items = [(self.build_task(step, params, body, by), idempotency, rate)
                 for step, params, body, by, idempotency, rate in requests]
        answers = self.store.submit_group(items, self.worker)
        for answer in answers:
            if not isinstance(answer, ApiError) and not answer[1]:
                if answer[0].status is TaskStatus.RUNNING:
                    self.launch(answer[0])
                else:
                    self._wake.set()
        return answers

    def build_task(self, step_name: str, params: BaseModel, body: dict[str, Any],
                   requested_by: dict[str, Any] | None, **links: Any) -> Task:
        """A new task record for ``step_name`` (not stored yet); ``links``: orchestration fields.

        The step's policy (ETL_STEP_POLICIES_FILE) gives its retry policy and concurrency key.
        """
        task_id = new_task_id()
        policy = self.policies.get(step_name)
        if policy.retry is not None:
            links.setdefault("retry", policy.retry.model_dump())
        dumped = params.model_dump(mode="json")
        if policy.concurrency is not None:
            links.setdefault("concurrency", policy.concurrency.for_task(dumped))
        return Task(
            task_id=task_id,
            step_name=step_name,
            status=TaskStatus.QUEUED,
            created_at=now_iso(),
            params=dumped,
            secret_fields=[list(path) for path in secrets.secret_paths(type(params))],
            previous_outputs=body.get("previous_outputs") or {},
            custom_params=body.get("custom_params") or {},
            log_file=str(self.store.paths.log_file(task_id)),
            requested_by=requested_by,
            **links,
        )

    def launch(self, task: Task) -> None:
        """Start the thread of a task the store admitted as running on this worker."""
        context = runtime.TaskContext(
            task_id=task.task_id,
            input_dir=self.settings.input_dir,
            output_dir=self.settings.output_dir,
            work_root=self.settings.work_dir,
            work_dir=self.store.paths.work_dir(task.task_id),
            previous_outputs=task.previous_outputs,
            custom_params=task.custom_params,
            log_file=self.store.paths.log_file(task.task_id),
        )
        item = LocalTask(task.task_id, context)
        global _running_here
        with self._lock:
            self._tasks[task.task_id] = item
            _running_here += 1
        self._threads.run(f"task-{task.task_id}", lambda: self._execute(task, context, item))

    def _execute(self, task: Task, context: runtime.TaskContext, item: LocalTask) -> None:
        """The task thread: run the step and record how it ended."""
        status, reason, result, error = execute_step(task, context, self.settings.task_timeout_seconds, "worker",
                                                     f"worker {self.worker.id}")
        context.close_log()
        item.ending = True
        ended = None
        try:
            ended = self._record_end(context, status, reason, result, error)
        except StorageUnavailable as exc:
            # The end is kept and retried by the control loop: the task must not stay "running".
            logger.error("task %s: could not record its end (%s); retrying", task.task_id, exc.detail)
            with self._lock:
                self._unrecorded[task.task_id] = lambda: self._record_end(context, status, reason, result, error)
        except Exception as exc:
            # Never leave the task "running" under a live owner: record the failure to record.
            logger.exception("task %s: could not record its end", task.task_id)
            message = f"the step ended but its outcome could not be recorded: {type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                self.store.finish(task.task_id, TaskStatus.FAILED, "its outcome could not be recorded",
                                  owner=self.worker.id, error={"type": type(exc).__name__,
                                                               "message": secrets.mask_text(message)[:2000],
                                                               "traceback": None})
        finally:
            global _ended_here, _running_here
            with self._lock:
                self._tasks.pop(task.task_id, None)
                _ended_here += 1
                _running_here -= 1
            item.done.set()
            self._wake.set()
        if ended is not None and self.on_task_end is not None:
            self.on_task_end(ended)

    def _record_end(self, context: runtime.TaskContext, status: TaskStatus, reason: str, result: Any,
                    error: dict[str, Any] | None) -> Task | None:
        def extra(task: Task) -> None:
            task.log_tail = list(context.log_tail)
            task.log_lines = context.log_lines
            task.artifacts = list(context.artifacts)
            if status is not TaskStatus.COMPLETED:
                task.progress = context.progress

        if result is not None:
            result = secrets.mask_values(result)  # resolved values only: result keys are data, never masked by name
        return self.store.finish(context.task_id, status, reason, result=result, error=error, extra=extra,
                                 owner=self.worker.id)

    # --- the control loop ----------------------------------------------------------------

    def _loop(self) -> None:
        last_beat = last_sweep = 0.0
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
                    self._start_queued()
            except Exception:
                logger.exception("runner loop error (retrying)")
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            if self._closing.is_set() and not self._has_tasks():
                break

    def _has_tasks(self) -> bool:
        with self._lock:
            return bool(self._tasks) or bool(self._unrecorded)

    def _retry_unrecorded(self) -> None:
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

    def _watch_tasks(self, now: float) -> None:
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

    def _abandon(self, item: LocalTask) -> None:
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
        self._wake.set()

    def _start_queued(self) -> None:
        while not self._closing.is_set():
            task = self.store.claim_next(self.worker)
            if task is None:
                return
            logger.info("task %s: starting from the queue", task.task_id)
            self.launch(task)

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def wake(self) -> None:
        """Look at the queue now (a retry joined it)."""
        self._wake.set()

    def running_here(self) -> int:
        with self._lock:
            return len(self._tasks)
