"""Runs tasks in threads of this worker process, and keeps the worker's side of the shared rules.

The Runner admits tasks through the store, starts each admitted one on a task thread
(task_threads.py) that runs its step (execution.py), and records how it ended. One control
thread per worker (control_loop.py) heartbeats, flushes progress, delivers stop requests,
enforces timeouts and the stop grace period, fails tasks of dead workers, and starts queued
tasks as slots free up.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from api.control_loop import ControlLoop
from api.errors import ApiError, ShuttingDown, StorageUnavailable
from api.execution import execute_step
from api.orchestration.policies import StepPolicies
from api.settings import Settings
from api.store import TaskStore
from api.task import Task, TaskStatus, new_task_id, now_iso
from api.task_threads import TaskThreads
from api.workers import WorkerInfo
from etl import runtime, secrets

logger = logging.getLogger(__name__)

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


class Runner(ControlLoop):
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
        self._threads = TaskThreads()
        self._unrecorded: dict[str, Callable[[], None]] = {}  # ends the store refused (disk full): retried
        self._log_handler = runtime.TaskLogHandler()
        self._log_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.abandoned = 0
        self.freed = 0  # slots this worker freed since its control loop last filled them
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
        self.store.start_checkpoints()
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
                self.freed += 1
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

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def wake(self) -> None:
        """Look at the queue now (a retry joined it)."""
        self._wake.set()

    def running_here(self) -> int:
        with self._lock:
            return len(self._tasks)
