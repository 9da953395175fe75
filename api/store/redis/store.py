"""The scale-out store: task state in Redis, changed only by our Lua scripts (scripts.py).

The same verbs as the local TaskStore. A task admitted under the global cap is *dispatched*: it
is ``running`` with a fencing token and a short dispatch lease, and the ``dispatch`` hook
publishes it (Celery). The worker that claims it with that token owns it; its heartbeat renews
the lease; its outcome is recorded only while it still owns the task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

import redis

from api.errors import (
    Conflict,
    QueueFull,
    RateLimited,
    StorageUnavailable,
    TaskNotFound,
)
from api.store.counters import Counters
from api.store.events import event_of
from api.store.files import StoragePaths
from api.store.redis import records as R
from api.store.redis import scripts
from api.store.redis.ending import COMMIT_RETRIES, RedisEnding
from api.store.redis.errors import translated as _translated
from api.store.redis.extras import RedisExtras
from api.store.redis.orchestration import INSERT_PIPELINE, RedisOrchestration
from api.store.redis.resources import RedisResources
from api.store.redis.schedules import RedisSchedules
from api.store.watch import TaskWatch
from api.task import Task, TaskStatus, is_task_id, now_iso, parse_iso
from api.workers import WorkerInfo

logger = logging.getLogger(__name__)

QUEUE_FULL_RETRY_SECONDS = 5
TTL_READ_SECONDS = 10.0


class RedisStore(RedisEnding, RedisExtras, RedisOrchestration, RedisResources, RedisSchedules):
    """All task state shared between API hosts and worker hosts, in Redis."""

    def __init__(self, url: str, root: Any, work_root: Any, output_root: Any, *, ttl_seconds: float,
                 max_running: int, max_queued: int, worker_lost_after_seconds: float, lease_seconds: float) -> None:
        self.url = url
        self.paths = StoragePaths(root, work_root, output_root)
        self._ttl_seconds = ttl_seconds
        self._ttl_read: tuple[float, float] | None = None  # (when read, value) on worker hosts
        self.follows_api = False  # worker hosts: the TTL and cap are the API hosts' (seeded in Redis)
        self.default_cap = max_running
        self.max_queued = max_queued
        self.worker_lost_after_seconds = worker_lost_after_seconds
        self.lease_seconds = lease_seconds
        # Unclaimed dispatches get a new token after this (a message lost with a host, or a backlog).
        self.dispatch_seconds = max(10.0, 3 * lease_seconds)
        self.lost_reason: str | None = None
        # (task, error) -> seconds until the next attempt, or None: the retry policy (api/orchestration/retries.py)
        self.retry_decider: Callable[[Task, dict[str, Any]], float | None] | None = None
        self.dispatch: Callable[[str, str], None] | None = None  # publishes (task id, token)
        self._r: redis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._mirror = None
        self._listener = None
        # Wakes this process's long-polls and event streams at once on its own commits, and on
        # changes made elsewhere through the change listener (changes.py).
        self.watch = TaskWatch()

    # --- opening -------------------------------------------------------------------------

    def open(self) -> None:
        for folder in (self.paths.root, self.paths.logs_dir, self.paths.work_root):
            folder.mkdir(parents=True, exist_ok=True)
        self._r = redis.Redis.from_url(self.url, decode_responses=True, socket_connect_timeout=1.0,
                                       socket_timeout=5.0, health_check_interval=10)
        for name in ("SUBMIT", "COMMIT", "RESERVE", "REDISPATCH", "RENEW", "ACQUIRE_LEASE", "RELEASE_LEASE",
                     "RECORD_WITH_LEASE", "HEARTBEAT", "APPEND_LOG"):
            self._scripts[name] = self._r.register_script(getattr(scripts, name))
        self._scripts["INSERT_PIPELINE"] = self._r.register_script(INSERT_PIPELINE)

    def close(self) -> None:
        self.stop_change_listener()
        self.stop_file_writer()
        if self._r is not None:
            self._r.close()
            self._r = None

    @property
    def r(self) -> redis.Redis:
        if self._r is None:
            raise StorageUnavailable("The task store is not open.")
        return self._r

    def _run(self, name: str, *args: Any) -> Any:
        return self._scripts[name](args=[str(a) for a in args], client=self.r)

    def check_database(self) -> None:
        """Nothing to check beyond reaching Redis, which every verb does."""

    @property
    def max_running(self) -> int:
        """The global cap: a live Redis value (POST /capacity), the setting until changed."""
        try:
            value = self.r.get(R.K_CAP)
        except redis.RedisError:
            return self.default_cap
        return int(value) if value else self.default_cap

    @_translated
    def set_max_running(self, cap: int) -> None:
        self.r.set(R.K_CAP, int(cap))

    @_translated
    def seed_shared_settings(self) -> None:
        """API hosts: the TTL in Redis for the worker hosts, and the cap unless one is there
        (POST /capacity changes it later; a restart does not reset it)."""
        self.r.set(R.K_CAP, int(self.default_cap), nx=True)
        self.r.set(R.K_TTL, repr(float(self._ttl_seconds)))

    @property
    def ttl_seconds(self) -> float:
        """How long ended tasks are kept; worker hosts read the API hosts' value (every 10 s at most)."""
        if not self.follows_api:
            return self._ttl_seconds
        now = time.monotonic()
        if self._ttl_read is None or now - self._ttl_read[0] > TTL_READ_SECONDS:
            try:
                value = self.r.get(R.K_TTL)
            except redis.RedisError:
                value = None
            if value is not None:
                self._ttl_read = (now, float(value))
        return self._ttl_read[1] if self._ttl_read else self._ttl_seconds

    # --- records -------------------------------------------------------------------------

    @_translated
    def get(self, task_id: str) -> Task:
        if not is_task_id(task_id):
            raise TaskNotFound()
        raw = self.r.hget(R.K_TASK + task_id, "json")
        if raw is None:
            raise TaskNotFound()
        task = R.decode(raw)
        if task.expired():
            raise TaskNotFound()
        return task

    def _load(self, task_id: str) -> Task | None:
        raw = self.r.hget(R.K_TASK + task_id, "json")
        return R.decode(raw) if raw is not None else None

    @staticmethod
    def _deltas(task: Task, previous: TaskStatus | None, started: bool = False) -> str:
        counters = Counters()
        if previous is not task.status:
            counters.moved(task.step_name, previous.value if previous else None, task.status.value)
        if previous is None:
            counters.submitted(task.step_name)
        if started and task.worker:
            # From the latest time it (re)joined the queue: a retry's wait excludes its earlier attempts.
            queued_at = next((h["at"] for h in reversed(task.history) if h["status"] == "queued"), task.created_at)
            waited = max(0.0, time.time() - parse_iso(queued_at))
            counters.started(f"{task.worker['host']}:{task.worker['pid']}", waited, task.step_name,
                             (task.concurrency or {}).get("key"))
        if task.status.terminal and previous is not task.status:
            counters.ended(task.step_name, task.status.value, task.duration_seconds)
        return R.flat_deltas(counters)

    def _commit(self, task_id: str, change: Callable[[Task], bool], guard: str = "", value: str = "",
                flags: str = "", owner: str = "", stop: Any = None, started: bool = False,
                ops: list | None = None) -> tuple[Task | None, bool]:
        """Apply ``change`` and commit it if the record did not move meanwhile (else retry).

        Returns (task, committed): the task as stored, and whether this change was written (False:
        ``change`` declined, or the guard refused it). ``ops``: the orchestration side of the
        change (scripts.COMMIT), which ``change`` may fill in.
        """
        for _ in range(COMMIT_RETRIES):
            raw = self.r.hmget(R.K_TASK + task_id, "json", "rev")
            if raw[0] is None:
                return None, False
            task = R.decode(raw[0])
            previous = task.status
            history_before = len(task.history)
            if not change(task):
                return task, False
            task.rev = int(raw[1]) + 1
            expires = math.ceil(parse_iso(task.expires_at)) if task.status.terminal and task.expires_at else 0
            kind = "status" if previous is not task.status or len(task.history) > history_before else "progress"
            done = self._run("COMMIT", task_id, raw[1], task.rev, R.encode_for_feed(task), previous.value,
                             task.status.value, task.step_name, guard, value, flags, owner,
                             int(self.lease_seconds * 1000), expires, self._deltas(task, previous, started),
                             R.dumps(stop), R.dumps(event_of(task, kind)), R.dumps(ops) if ops else "")
            if done == -1:
                return self._load(task_id), False
            if done:
                task.event_id = int(done[1])
                self.watch.changed(task_id)
                return task, True
        raise StorageUnavailable("The task changed too often to be updated; retry.")

    # --- admission -----------------------------------------------------------------------

    @_translated
    def live_running(self, alive: set[str] | None = None) -> int:
        """Tasks holding a slot (dispatched or claimed); a lost worker's slot frees when its lease is reaped."""
        return self.r.zcard(R.K_RUNNING)

    @_translated
    def queued_count(self) -> int:
        return self.r.llen(R.K_QUEUE)

    @_translated
    def submit(self, task: Task, worker: WorkerInfo, idempotency: tuple[str, str] | None,
               rate: tuple[str, float] | None = None, wait: bool = True) -> tuple[Task, bool]:
        """Admit ``task`` in one script: dispatched if a slot is free, queued if not, QueueFull beyond."""
        task.history.append({"status": TaskStatus.QUEUED.value, "at": now_iso(), "reason": "accepted"})
        if idempotency:
            task.idempotency_key, task.idempotency_fingerprint = idempotency
        task.rev = 1
        queued = Task.from_dict(task.to_dict())
        queued.message = "waiting for a free slot"
        queued.history = list(task.history)
        running = task
        running.message = "dispatched to the worker hosts"
        running.transition(TaskStatus.RUNNING, "dispatched: a slot was free", self.ttl_seconds)
        key, fingerprint = idempotency or self._fire_idempotency() or ("", "")
        if key and not task.idempotency_key and not idempotency:
            queued.idempotency_key = running.idempotency_key = key  # a schedule's occurrence: fired once
            queued.idempotency_fingerprint = running.idempotency_fingerprint = fingerprint
        bucket, per_minute = rate or ("", 0)
        concurrency = task.concurrency or {}
        answer = self._run("SUBMIT", task.task_id, task.step_name, 1, R.encode_for_feed(running),
                           R.encode_for_feed(queued), self._deltas(running, None), self._deltas(queued, None),
                           self.max_queued, self.default_cap, int(self.dispatch_seconds * 1000), key, fingerprint,
                           R.dumps({"task_id": task.task_id, "fingerprint": fingerprint}), bucket, per_minute,
                           R.dumps(event_of(running, "status")), R.dumps(event_of(queued, "status")),
                           concurrency.get("key") or "", concurrency.get("limit", 1),
                           "1" if concurrency.get("mode") == "singleton" else "")
        kind = answer[0]
        if kind == "replay":
            self._fire_replayed()
            return R.decode(answer[1]), True
        if kind == "singleton":
            raise Conflict(f"A {task.step_name} task with key {concurrency['key']} is already running or waiting "
                           f"(task {answer[1]}); this step runs one at a time.", task_id=answer[1],
                           key=concurrency["key"])
        if kind == "conflict":
            raise Conflict("This Idempotency-Key was already used with a different request "
                           f"(task {answer[1]}); use a new key.", task_id=answer[1])
        if kind == "rate":
            raise RateLimited(f"Too many tasks started with this key (limit {per_minute:g} per minute); "
                              f"retry in {answer[1]} s.", retry_after_seconds=int(answer[1]))
        if kind == "full":
            raise QueueFull(f"The queue is full ({answer[1]} tasks waiting, limit {self.max_queued}); retry later.",
                            retry_after_seconds=QUEUE_FULL_RETRY_SECONDS)
        self.watch.changed(task.task_id)
        if kind == "run":
            running.event_id = int(answer[2])
            self._dispatch(task.task_id, answer[1])
            return running, False
        queued.event_id = int(answer[2])
        return queued, False

    def _dispatch(self, task_id: str, token: str) -> None:
        if self.dispatch is None:
            logger.error("task %s: won a slot but this process cannot publish it", task_id)
            return
        try:
            self.dispatch(task_id, token)
        except Exception:
            # The dispatch lease runs out and the reaper dispatches it again with a new token.
            logger.exception("task %s: could not publish it (retried when its dispatch lease ends)", task_id)

    @_translated
    def claim_next(self, worker: WorkerInfo | None = None) -> Task | None:
        """Dispatch the oldest queued task if the global cap allows; None otherwise."""
        if self.r.llen(R.K_QUEUE) == 0:
            return None
        won = self._run("RESERVE", self.default_cap, int(self.dispatch_seconds * 1000))
        if not won:
            return None
        task_id, token = won

        def change(task: Task) -> bool:
            if task.status is not TaskStatus.QUEUED:
                return False
            task.queue_key = None
            task.message = "dispatched to the worker hosts"
            task.transition(TaskStatus.RUNNING, "dispatched: a slot became free", self.ttl_seconds)
            return True

        task, done = self._commit(task_id, change, guard="token", value=token)
        if done:
            self._dispatch(task_id, token)
        return task if done else None

    # --- the worker's side ----------------------------------------------------------------

    @_translated
    def claim(self, task_id: str, token: str, worker: WorkerInfo) -> Task | None:
        """The worker holding ``token`` takes the task; None if the token is stale (a redelivery)."""

        def change(task: Task) -> bool:
            if task.status.terminal or task.worker:
                return False
            if task.status is TaskStatus.QUEUED:
                task.transition(TaskStatus.RUNNING, "dispatched: a slot became free", self.ttl_seconds)
            task.worker = worker.as_dict()
            task.message = "running"
            # The start completes the dispatch's history entry instead of adding one: history holds one
            # entry per transition (and stop request) in both modes, and so does the feed's status events.
            dispatched = task.history[-1]
            started = f"started on worker {worker.host}:{worker.pid} (dispatch {token})"
            task.history[-1] = {**dispatched, "reason": f"{dispatched['reason']}; {started}"}
            return True

        task, done = self._commit(task_id, change, guard="token", value=token, flags="C", owner=worker.id,
                                  started=True)
        return task if done else None

    @_translated
    def renew(self, task_id: str, owner: str) -> str:
        """Renew the owner's lease: ``"ok"``, ``"stop"`` (a stop is pending) or ``"lost"``."""
        return self._run("RENEW", task_id, owner, int(self.lease_seconds * 1000))

    def control(self, task_ids: list[str], owner: str) -> dict[str, str]:
        orders = {task_id: self.renew(task_id, owner) for task_id in task_ids}
        return {task_id: order for task_id, order in orders.items() if order != "ok"}

    @_translated
    def append_log(self, task_id: str, lines: list[str], max_lines: int) -> None:
        """Append log lines (kept up to ``max_lines``, then one truncation note), in one script."""
        if lines:
            self._run("APPEND_LOG", task_id, max_lines, *lines)
