"""Where steps run in scale-out mode (ETL_BACKEND=celery): the Celery app and the task that executes
one step on a worker host (``python -m api worker``, Linux only).

Celery only carries the message (task id, fencing token); the state lives in Redis (api/store/redis).
A redelivered or stale message is a no-op (its token no longer holds); a heartbeat thread renews
the lease and reads the stop flag; the outcome is recorded only while the lease holds, and a
worker that lost it aborts its step. A step that outlives its stop or its lease takes the pool
process down with it (Celery starts a fresh one), with its subprocesses killed first.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Any

import psutil
from celery import Celery, signals

from api.errors import StorageUnavailable
from api.execution import execute_step
from api.settings import Settings, get_settings
from api.store.redis.workfolders import sweep_work_folders
from api.task import Task, TaskStatus
from api.workers import HOSTNAME, WorkerInfo
from etl import registry, runtime, secrets

logger = logging.getLogger(__name__)

QUEUE = "etl"
TASK_NAME = "etl.run_step"
CONTROL_SECONDS = 0.1  # lease renewal and stop-flag read
PROGRESS_FLUSH_SECONDS = 0.5
MAX_LOG_LINES = 20000
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
ORPHAN_CHECK_SECONDS = 0.5

app = Celery("etl")


def configure(settings: Settings) -> Celery:
    """The Celery settings that avoid its known traps (README "Scale out")."""
    app.conf.update(
        broker_url=settings.redis_url,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        # Early ack: late-acked messages made workers exit on a connection loss, and visibility
        # timeouts re-ran long tasks concurrently. A lost message is dispatched again by the
        # API's reaper with a new token instead.
        task_acks_late=False,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # No ack emulation: it cost six Redis commands per message (the unacked hash and index,
        # two MULTI/EXEC) to redeliver a message taken by a host killed before it started the
        # step, which the API's reaper already re-dispatches with a new token (the dispatch lease).
        # Reserved messages of a host that stops are still handed back on its way out.
        broker_transport_options={"ack_emulation": False,
                                  "visibility_timeout": settings.broker_visibility_timeout_seconds},
        task_default_queue=QUEUE,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    return app


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a killed worker leaves no orphan)."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@signals.worker_init.connect
def _init_worker_host(**_: Any) -> None:
    """In the worker host's main process: adopt and kill what a killed pool process leaves behind.

    As a child subreaper, this process inherits the subprocesses of a pool process that died (kill
    -9, OOM). Pool processes share this process's group; step subprocesses run in their own
    session (etl.process), so any child outside this group is an orphan of a dead step.
    """
    global _draining
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    threading.Thread(target=_kill_orphans, name="etl-orphans", daemon=True).start()
    # Created before the pool forks, so every pool process (also a replacement) shares it.
    _draining = multiprocessing.Event()


@signals.worker_shutting_down.connect
def _drain(**_: Any) -> None:
    """SIGTERM on the host: running steps are asked to stop (as the local runner does on shutdown)."""
    if _draining is not None:
        _draining.set()


def _kill_orphans() -> None:
    own_group = os.getpgrp()
    while True:
        time.sleep(ORPHAN_CHECK_SECONDS)
        try:
            children = psutil.Process().children()
        except psutil.Error:
            continue
        for child in children:
            try:
                group = os.getpgid(child.pid)
            except OSError:
                continue
            if group == own_group:
                continue
            logger.warning("killing process %s (group %s) left behind by a pool process that died", child.pid, group)
            for kill, target in ((os.killpg, group), (os.kill, child.pid)):
                try:
                    kill(target, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.waitpid(child.pid, 0)
            except ChildProcessError:
                pass


def kill_descendants() -> None:
    """Kill every process this pool process started (the step's subprocesses and browsers)."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(children, timeout=2)


class WorkerHost:
    """The state of one pool process: its store connection and heartbeat."""

    def __init__(self, settings: Settings) -> None:
        from api.store import make_store

        self.settings = settings
        self.store = make_store(settings)
        self.store.open()
        self.store.dispatch = publish
        # The global cap is the API hosts' to set (api/store/redis): without it in Redis a worker
        # host dispatches nothing rather than trust its own ETL_MAX_CONCURRENT_TASKS.
        self.store.default_cap = 0
        self.store.follows_api = True
        self.worker = WorkerInfo.this_process()
        self.running = 0
        handler = runtime.TaskLogHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        logging.getLogger().addHandler(handler)
        if logging.getLogger("etl").getEffectiveLevel() > logging.INFO:
            logging.getLogger("etl").setLevel(logging.INFO)
        threading.Thread(target=self._beat, name="etl-heartbeat", daemon=True).start()
        threading.Thread(target=self._sweep, name="etl-work-folders", daemon=True).start()

    def _beat(self) -> None:
        while True:
            try:
                self.store.heartbeat(self.worker, role="worker", running=self.running, worker_host=host_name)
            except Exception as exc:
                logger.warning("heartbeat failed: %s", exc)
            time.sleep(self.settings.heartbeat_interval_seconds)

    def _sweep(self) -> None:
        """Every cleanup interval: this host's work folders of tasks cleanup removed (one process per host)."""
        interval = self.settings.cleanup_interval_seconds
        while True:
            time.sleep(min(interval, 5.0))
            try:
                sweep_work_folders(self.store, self.worker.id, interval)
            except Exception as exc:
                logger.warning("sweeping the work folders failed: %s", exc)
            time.sleep(max(0.0, interval - 5.0))


_host: WorkerHost | None = None
# This worker host's name (``python -m api worker --name``, else the machine's): set before the
# pool forks, so every pool process's heartbeat says which host it belongs to (GET /health).
host_name = HOSTNAME
_draining: Any = None  # set when the host shuts down (multiprocessing.Event, shared with the pool)


@signals.worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    global _host
    die_with_parent()
    # The step's subprocesses (etl.process) die with this process too.
    os.environ["ETL_KILL_WITH_PARENT"] = "1"
    registry.load_steps()
    _host = WorkerHost(get_settings())


def publish(task_id: str, token: str) -> None:
    """Send the step to the worker hosts (after it won a slot under the global cap)."""
    app.send_task(TASK_NAME, args=[task_id, token], queue=QUEUE)


@app.task(name=TASK_NAME, ignore_result=True, acks_late=False)
def run_step(task_id: str, token: str) -> None:
    if _host is None:  # a solo/threads pool: no process init signal
        _init_pool_process()
    Execution(_host, task_id, str(token)).run()


class Execution:
    """One step on this pool process, from the claim to the recorded end."""

    def __init__(self, host: WorkerHost, task_id: str, token: str) -> None:
        self.host, self.store, self.settings = host, host.store, host.settings
        self.task_id, self.token = task_id, token
        self.worker = WorkerInfo(id=f"{HOSTNAME}:{os.getpid()}:t{token}", host=HOSTNAME, pid=os.getpid())
        self.outcome: tuple[TaskStatus, str, Any, dict[str, Any] | None] | None = None
        self.log_offset = 0  # bytes of the local log file already sent to Redis

    def run(self) -> None:
        task = self._claim()
        if task is None:
            logger.info("task %s: token %s no longer holds (a redelivery or a stop); nothing to do",
                        self.task_id, self.token)
            return
        log_file = self.store.paths.log_file(self.task_id)
        context = runtime.TaskContext(
            task_id=task.task_id, input_dir=self.settings.input_dir, output_dir=self.settings.output_dir,
            work_root=self.settings.work_dir, work_dir=self.store.paths.work_dir(task.task_id),
            previous_outputs=task.previous_outputs, custom_params=task.custom_params, log_file=log_file)
        self.host.running += 1
        thread = threading.Thread(target=self._execute, args=(task, context), name=f"task-{task.task_id}", daemon=True)
        thread.start()
        try:
            self._watch(thread, context)
        finally:
            self.host.running -= 1
            log_file.unlink(missing_ok=True)
        self._promote_queue()

    def _claim(self) -> Task | None:
        for _ in range(50):
            try:
                return self.store.claim(self.task_id, self.token, self.worker)
            except StorageUnavailable:
                time.sleep(0.2)
        return None

    def _execute(self, task: Task, context: runtime.TaskContext) -> None:
        status, reason, result, error = execute_step(task, context, self.settings.task_timeout_seconds,
                                                     "worker host", f"worker {self.worker.id}")
        context.close_log()
        if result is not None:
            result = secrets.mask_values(result)  # resolved values only: result keys are data
        self.outcome = (status, reason, result, error)

    def _ship_logs(self, context: runtime.TaskContext, final: bool = False) -> None:
        """Send the log lines written since the last call to Redis (whole lines; the rest at the end)."""
        try:
            with open(context.log_file, "rb") as log:
                log.seek(self.log_offset)
                chunk = log.read()
        except (FileNotFoundError, TypeError):
            return
        if not final:
            chunk = chunk[: chunk.rfind(b"\n") + 1]
        if chunk:
            self.store.append_log(self.task_id, chunk.decode("utf-8", errors="replace").splitlines(), MAX_LOG_LINES)
            self.log_offset += len(chunk)

    def _watch(self, thread: threading.Thread, context: runtime.TaskContext) -> None:
        started = time.monotonic()
        stop_seen: float | None = None
        # The first progress flush after PROGRESS_FLUSH_SECONDS like the later ones: a short step
        # ends before it, and its end carries the same progress, log tail and lines in one commit.
        last_flush = started
        last_renewed = time.monotonic()
        while thread.is_alive():
            thread.join(CONTROL_SECONDS)
            if not thread.is_alive():
                break  # the end is recorded next, fenced by the owner's lease: no renewal needed first
            now = time.monotonic()
            try:
                order = self.store.renew(self.task_id, self.worker.id)
                last_renewed = now
                if order != "lost":
                    # Checkpoints pass until the lease would run out (a paused process finds it
                    # expired at its next checkpoint, before any renewal).
                    context.owned_until = now + self.store.lease_seconds
            except StorageUnavailable:
                # Redis is away: keep running (the reaper waits for Redis to be back), and let
                # checkpoints pass; the fenced finish still refuses an end if the lease is lost.
                order = "ok"
                context.owned_until = None
            if order == "lost" or now - last_renewed > 10 * self.store.lease_seconds:
                logger.warning("task %s: this worker no longer owns it; aborting the step", self.task_id)
                self._abort(thread, context, "lost")
                return
            if order == "stop" and not context.stop_event.is_set():
                logger.info("task %s: stop requested; telling the step", self.task_id)
                # On its own thread: killing a subprocess tree may wait for it, and this loop
                # records the end as soon as the step returns.
                threading.Thread(target=context.request_stop, args=("request",), daemon=True).start()
            if _draining is not None and _draining.is_set() and not context.stop_event.is_set():
                logger.info("task %s: the worker host is shutting down; stopping the step", self.task_id)
                threading.Thread(target=context.request_stop, args=("shutdown",), daemon=True).start()
            if not context.stop_event.is_set() and now - started > self.settings.task_timeout_seconds:
                context.request_stop("timeout")
            if context.stop_event.is_set():
                stop_seen = stop_seen or now
                if now - stop_seen > self.settings.stop_grace_seconds:
                    reason = f"the step did not stop within {self.settings.stop_grace_seconds:g} s; it was killed"
                    self._record(TaskStatus.STOPPED if context.stop_reason != "timeout" else TaskStatus.FAILED,
                                 reason, None, None if context.stop_reason != "timeout" else
                                 {"type": "Timeout", "message": reason, "traceback": None}, context)
                    self._abort(thread, context, context.stop_reason or "request")
                    return
            if context.changed.is_set() and now - last_flush >= PROGRESS_FLUSH_SECONDS:
                last_flush = now
                context.changed.clear()  # before reading: a line written meanwhile sets it again
                try:
                    self._ship_logs(context)
                    self.store.save_progress(self.task_id, context.progress, context.message,
                                             list(context.log_tail), context.log_lines, list(context.artifacts),
                                             owner=self.worker.id)
                except StorageUnavailable:
                    context.changed.set()  # Redis is away: the step goes on, progress is sent once it is back
        if self.outcome is not None:
            self._record(*self.outcome, context)

    def _record(self, status: TaskStatus, reason: str, result: Any, error: dict[str, Any] | None,
                context: runtime.TaskContext) -> None:
        def extra(task: Task) -> None:
            task.log_tail, task.log_lines = list(context.log_tail), context.log_lines
            task.artifacts = list(context.artifacts)
            if status is not TaskStatus.COMPLETED:
                task.progress = context.progress

        deadline = time.monotonic() + 120
        while True:
            try:
                self._ship_logs(context, final=True)
                task = self.store.finish(self.task_id, status, reason, result=result, error=error, extra=extra,
                                         owner=self.worker.id)
                if task is not None and task.status is not status and task.retry_due is None:
                    logger.warning("task %s: its end was not recorded: it is %s (this worker lost it)",
                                   self.task_id, task.status.value)
                return
            except StorageUnavailable as exc:
                if time.monotonic() > deadline:
                    logger.error("task %s: could not record its end: %s", self.task_id, exc.detail)
                    return
                time.sleep(0.5)

    def _abort(self, thread: threading.Thread, context: runtime.TaskContext, reason: str) -> None:
        """Stop the step now: kill its subprocesses; if its thread still runs, end this pool process."""
        context.request_stop(reason)
        kill_descendants()
        thread.join(min(1.0, self.settings.stop_grace_seconds))
        if thread.is_alive():
            logger.warning("task %s: the step ignores the stop; ending pool process %s", self.task_id, os.getpid())
            self._promote_queue()
            os._exit(1)

    def _promote_queue(self) -> None:
        """A slot may have freed: dispatch the next queued task now (the API hosts do it too)."""
        try:
            while self.store.claim_next() is not None:
                pass
        except StorageUnavailable:
            pass


def worker_argv(settings: Settings, concurrency: int, name: str | None) -> list[str]:
    global host_name
    host_name = name or HOSTNAME
    return ["worker", "-P", "prefork", "-c", str(concurrency), "-O", "fair", "-Q", QUEUE,
            "-n", f"etl-{name or HOSTNAME}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-l", settings.log_level]
