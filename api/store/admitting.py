"""Admitting tasks into the local store: submit (one or a group, with idempotency keys and the
rate limit), and claim_next, which starts the oldest runnable queued task (the rule: admission.py)."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from api.errors import ApiError, Conflict, QueueFull, RateLimited
from api.store.admission import Admission, admit
from api.store.cachedb import put, savepoint
from api.store.keys import (
    K_IDEMPOTENCY,
    K_KEY_HELD,
    K_KEY_WAIT,
    K_RATE,
    K_STATUS,
    QUEUE_PREFIX,
)
from api.task import Task, TaskStatus, now_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore
    from api.workers import WorkerInfo

QUEUE_FULL_RETRY_SECONDS = 5
CLAIM_SCAN_PAGE = 100


class Admitting:
    """submit, submit_group and claim_next (mixed into TaskStore)."""

    def live_running(self: TaskStore, alive: set[str] | None = None) -> int:
        """Running tasks whose owner is alive (a dead owner's slot is free at once)."""
        alive = self.alive_workers() if alive is None else alive
        return sum(1 for _, index in self._range(f"{K_STATUS}running:") if index.get("owner") in alive)

    def queued_count(self: TaskStore) -> int:
        return self._count(QUEUE_PREFIX + "-")

    def submit(self: TaskStore, task: Task, worker: WorkerInfo, idempotency: tuple[str, str] | None,
               rate: tuple[str, float] | None = None, wait: bool = True) -> tuple[Task, bool]:
        """Admit ``task``: running if a slot is free, queued if not, QueueFull beyond the queue limit.

        Returns (task, replayed): with an idempotency (key, request fingerprint) seen before, the
        earlier task and True; Conflict if that key came with a different request. An earlier
        task that has expired no longer holds its key. With ``wait=False``, StoreBusy instead of
        waiting for the write lock.
        """
        self.check_database()
        alive = self.alive_recently()  # process checks outside the lock
        with self._transaction(wait):
            found = self._submit_in_transaction(task, worker, idempotency, rate, alive)
        # The commit went to the database file only if that file is still the one we opened.
        self.check_database()
        if found is not None:
            return found, True
        self._sync_file(task)
        return task, False

    def submit_group(self: TaskStore, items: list[tuple[Task, tuple[str, str] | None, tuple[str, float] | None]],
                     worker: WorkerInfo) -> list[tuple[Task, bool] | ApiError]:
        """Admit several tasks (task, idempotency, rate) in one transaction, in their order: one
        commit and one wait for the write lock instead of one each (shared with the task ends of
        the moment). Each gets what ``submit`` would answer, or the ApiError refusing it (that
        task's writes undone, the others kept); an error of the store itself refuses them all (raised)."""
        self.check_database()
        alive = self.alive_recently()

        def admit_all() -> list[tuple[Task, bool] | ApiError]:
            answers: list[tuple[Task, bool] | ApiError] = []
            for task, idempotency, rate in items:
                try:
                    with savepoint(self.cache):
                        found = self._submit_in_transaction(task, worker, idempotency, rate, alive)
                except ApiError as exc:
                    answers.append(exc)
                    continue
                answers.append((found, True) if found is not None else (task, False))
            return answers

        answers = self._grouped(admit_all)
        self.check_database()
        for answer in answers:
            if not isinstance(answer, ApiError) and not answer[1]:
                self._sync_file(answer[0])
        return answers

    def _submit_in_transaction(self: TaskStore, task: Task, worker: WorkerInfo, idempotency: tuple[str, str] | None,
                               rate: tuple[str, float] | None, alive: set[str]) -> Task | None:
        """Admit ``task`` (inside a transaction); the earlier task of a replayed idempotency key
        instead, without admitting anything."""
        cache = self.cache
        if idempotency:
            seen = cache.get(K_IDEMPOTENCY + idempotency[0])
            earlier = self._load(seen["task_id"]) if seen is not None else None
            if earlier is not None and not earlier.expired():
                if seen["fingerprint"] != idempotency[1]:
                    raise Conflict("This Idempotency-Key was already used with a different request "
                                   f"(task {earlier.task_id}); use a new key.", task_id=earlier.task_id)
                return earlier
        if rate is not None:
            self._take_token(*rate)
        if idempotency:
            task.idempotency_key, task.idempotency_fingerprint = idempotency
        self._admit_new(task, worker, alive)
        return None

    def _admit_new(self: TaskStore, task: Task, worker: WorkerInfo, alive: set[str], accepted: bool = False,
                   starts_here: bool = True) -> None:
        """Start, queue or refuse a new task and store it (inside a transaction)."""
        self._check_singleton(task, alive)
        queued = self.queued_count()
        task.history.append({"status": TaskStatus.QUEUED.value, "at": now_iso(), "reason": "accepted"})
        key_free = self._key_free(task, alive)
        decision = admit(ahead=queued, running=self.live_running(alive), max_running=self.max_running,
                         max_queued=self.max_queued, accepted=accepted, key_free=key_free, starts_here=starts_here)
        if decision is Admission.RUN:
            self._start(task, worker, "started at once: a slot was free")
        elif decision is Admission.QUEUE:
            task.queue_key = self.cache.push(task.task_id, prefix=QUEUE_PREFIX)
            self._mark_key(K_KEY_WAIT, task, True)
            task.message = "waiting for a free slot" if key_free else f"waiting for key {self._key_of(task)}"
        else:
            raise QueueFull(f"The queue is full ({queued} tasks waiting, limit {self.max_queued}); retry later.",
                            retry_after_seconds=QUEUE_FULL_RETRY_SECONDS)
        if task.idempotency_key:
            self._remember_idempotency(task)
        self._write(task, None)

    def _remember_idempotency(self: TaskStore, task: Task) -> None:
        put(self.cache, K_IDEMPOTENCY + task.idempotency_key,
                       {"task_id": task.task_id, "fingerprint": task.idempotency_fingerprint})

    def _take_token(self: TaskStore, bucket: str, per_minute: float) -> None:
        """Token bucket per API key, in the shared store (inside the admission transaction)."""
        key = K_RATE + bucket
        now = time.time()
        state = self.cache.get(key) or {"tokens": per_minute, "at": now}
        tokens = min(per_minute, state["tokens"] + (now - state["at"]) * per_minute / 60.0)
        if tokens < 1.0:
            wait = math.ceil((1.0 - tokens) * 60.0 / per_minute)
            raise RateLimited(f"Too many tasks started with this key (limit {per_minute:g} per minute); "
                              f"retry in {wait} s.", retry_after_seconds=wait)
        put(self.cache, key, {"tokens": tokens - 1.0, "at": now})

    def _start(self: TaskStore, task: Task, worker: WorkerInfo, reason: str) -> None:
        self._mark_key(K_KEY_WAIT, task, False)
        self._mark_key(K_KEY_HELD, task, True)
        task.worker = worker.as_dict()
        task.message = "running"
        task.transition(TaskStatus.RUNNING, f"{reason} (worker {worker.host}:{worker.pid})", self.ttl_seconds)

    def claim_next(self: TaskStore, worker: WorkerInfo) -> Task | None:
        """Start the oldest queued task on ``worker`` if the global cap allows; None otherwise."""
        if self.queued_count() == 0:
            return None
        self.check_database()
        alive = self.alive_recently()
        with self._transaction():
            running = self.live_running(alive)
            if admit(ahead=0, running=running, max_running=self.max_running,
                     max_queued=self.max_queued) is not Admission.RUN:
                return None
            task = self._first_runnable(alive)
            if task is None:
                return None
            task.queue_key = None
            self._start(task, worker, "a slot became free")
            self._write(task, TaskStatus.QUEUED)
        self._sync_file(task)
        return task

    def _first_runnable(self: TaskStore, alive: set[str]) -> Task | None:
        """The oldest queued task whose concurrency key is free, taken off the queue (inside a
        transaction). Tasks waiting for a busy key keep their place; the ones behind them may start."""
        after = None
        while True:
            rows = self._queue_head(after, CLAIM_SCAN_PAGE)
            for key, task_id in rows:
                task = self._load(task_id)
                if task is None or task.status is not TaskStatus.QUEUED:
                    self.cache.delete(key)  # a stale entry (stopped or removed meanwhile)
                    continue
                if self._key_free(task, alive):
                    self.cache.delete(key)
                    return task
            if len(rows) < CLAIM_SCAN_PAGE:
                return None
            after = rows[-1][0][len(QUEUE_PREFIX) + 1:]
