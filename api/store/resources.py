"""Concurrency keys (resource locks) and why a queued task waits, in the local store.

A task with a key holds one unit of it while it runs (``keyheld:``) and waits for it while queued
(``keywait:``); the claim skips a task whose key is at its limit, keeping its place, so tasks with
the same key start in FIFO order and the others use the free slots meanwhile.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from api.errors import Conflict
from api.store.cachedb import key_range
from api.store.keys import K_KEY_HELD, K_KEY_LIMIT, K_KEY_WAIT, K_STATUS, QUEUE_PREFIX
from api.task import Task, TaskStatus, now_iso, parse_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore


def retry_wait(task: Task) -> dict[str, Any]:
    """Why a task waiting for its retry waits (it holds no slot meanwhile)."""
    return {"reason": "retry_backoff", "detail": f"attempt {task.attempt} waits until {task.retry_due} "
            "(it holds no slot meanwhile)", "until": task.retry_due, "attempt": task.attempt,
            "estimated_start": task.retry_due}


@dataclass
class WaitFacts:
    """What a store knows of a queued task's place: tasks ahead and running, and either the key
    that is at its limit (its holders, limit and waiters in queue order) or, with every slot taken,
    the tasks holding the slots (up to 50)."""

    ahead: int
    running: int
    key: str | None = None
    key_holders: list[str] = field(default_factory=list)
    key_limit: int = 0
    key_waiters: list[str] = field(default_factory=list)
    slot_holders: list[str] | None = None


def explain_wait(store: Any, task: Task, starter: str) -> dict[str, Any] | None:
    """GET /status's ``waiting`` for a queued task, from the store's ``_wait_facts``; ``starter``
    names what starts a task once a slot is free ("a worker", "a host")."""
    if task.status is not TaskStatus.QUEUED:
        return None
    if task.retry_due:
        return retry_wait(task)
    counters = store.counters()
    p50 = counters.duration_quantile(task.step_name, 0.5)
    facts = store._wait_facts(task)
    cap = store.max_running
    view: dict[str, Any] = {"queue_position": facts.ahead + 1, "tasks_ahead": facts.ahead, "running": facts.running,
                            "max_concurrent_tasks": cap, "step_p50_seconds": p50}
    if facts.key is not None:
        key, holders, limit = facts.key, facts.key_holders, facts.key_limit
        before = facts.key_waiters.index(task.task_id) if task.task_id in facts.key_waiters else 0
        view.update(reason="concurrency_key", key=key, key_limit=limit, blocked_by=holders,
                    waiting_for_key_ahead=before,
                    detail=f"key {key} is held by {len(holders)} task(s) (limit {limit}); "
                           f"{before} task(s) wait for it before this one")
        wait, basis = _estimate(store, holders, before, limit, counters, p50)
    elif facts.slot_holders is not None:
        view.update(reason="global_cap", blocked_by=facts.slot_holders,
                    detail=f"all {cap} slots are taken; {facts.ahead} task(s) are ahead in the queue")
        wait, basis = _estimate(store, facts.slot_holders, facts.ahead, cap, counters, p50)
    else:
        view.update(reason="starting", blocked_by=[], detail=f"a slot is free; {starter} is starting it")
        wait, basis = 0.0, "a slot is free"
    view["estimated_start"] = now_iso(time.time() + wait) if wait is not None else None
    view["estimate_basis"] = basis
    return view


def _estimate(store: Any, holders: list[str], ahead: int, slots: int, counters: Any,
              own_p50: float | None) -> tuple[float | None, str]:
    """Seconds until a slot (or a unit of a key) frees for a task with ``ahead`` before it: each
    holder should end at its step's recent p50 duration; later rounds take this step's p50."""
    now = time.time()
    left = []
    for task_id in holders:
        holder = store._load(task_id)
        p50 = counters.duration_quantile(holder.step_name, 0.5) if holder else None
        if p50 is not None and holder.started_at:
            left.append(max(0.0, p50 - (now - parse_iso(holder.started_at))))
    if not left:
        return None, "no completed run of the holding tasks' steps yet"
    left.sort()
    rounds = ahead // max(1, slots)
    first = left[min(ahead % max(1, slots), len(left) - 1)]
    later = rounds * (own_p50 if own_p50 is not None else max(left))
    return round(first + later, 3), (f"the holders' steps' recent p50 durations, then {rounds} round(s) of "
                                     f"this step's p50 ({own_p50} s)" if rounds else
                                     "the holders' steps' recent p50 durations")


class Resources:
    """Concurrency keys and "why waiting" (mixed into TaskStore)."""

    @staticmethod
    def _key_of(task: Task) -> str | None:
        return (task.concurrency or {}).get("key")

    def _mark_key(self: TaskStore, prefix: str, task: Task, on: bool) -> None:
        key = self._key_of(task)
        if key is not None:
            if on:
                self.cache.set(f"{prefix}{key}|{task.task_id}", "")
            else:
                self.cache.delete(f"{prefix}{key}|{task.task_id}")

    def key_limit(self: TaskStore, key: str, default: int = 1) -> int:
        limit = self._get(K_KEY_LIMIT + key)
        return int(limit) if limit is not None else default

    def key_holders(self: TaskStore, key: str, alive: set[str] | None = None) -> list[str]:
        """Tasks running with ``key`` under a live worker (a dead worker's task frees its key at once)."""
        alive = self.alive_workers() if alive is None else alive
        holders = []
        for row, _ in self._range(f"{K_KEY_HELD}{key}|"):
            task_id = row.rsplit("|", 1)[1]
            index = self._get(f"{K_STATUS}running:{task_id}")
            if index is not None and index.get("owner") in alive:
                holders.append(task_id)
        return holders

    def key_waiters(self: TaskStore, key: str) -> list[str]:
        return [row.rsplit("|", 1)[1] for row, _ in self._range(f"{K_KEY_WAIT}{key}|")]

    def _key_free(self: TaskStore, task: Task, alive: set[str]) -> bool:
        key = self._key_of(task)
        if key is None:
            return True
        return len(self.key_holders(key, alive)) < self.key_limit(key, task.concurrency.get("limit", 1))

    def _check_singleton(self: TaskStore, task: Task, alive: set[str]) -> None:
        key = self._key_of(task)
        if key is None or task.concurrency.get("mode") != "singleton":
            return
        busy = self.key_holders(key, alive) + self.key_waiters(key)
        if busy:
            raise Conflict(f"A {task.step_name} task with key {key} is already running or waiting (task {busy[0]}); "
                           "this step runs one at a time.", task_id=busy[0], key=key)

    def set_key_limit(self: TaskStore, key: str, limit: int | None) -> None:
        """Change a key's limit now, for every worker (None: back to the steps' default)."""
        with self._transaction():
            if limit is None:
                self.cache.delete(K_KEY_LIMIT + key)
            else:
                self.cache.set(K_KEY_LIMIT + key, int(limit))

    def keys_in_use(self: TaskStore) -> dict[str, dict[str, Any]]:
        """Every key held, awaited or given a limit: holders, waiters (FIFO order) and limit."""
        alive = self.alive_workers()
        names: set[str] = set()
        for prefix in (K_KEY_HELD, K_KEY_WAIT):
            names.update(row[len(prefix):].rsplit("|", 1)[0] for row, _ in self._range(prefix))
        limits = {row[len(K_KEY_LIMIT):]: value for row, value in self._range(K_KEY_LIMIT)}
        names.update(limits)
        view = {}
        for name in sorted(names):
            waiters = self.key_waiters(name)
            view[name] = {"holders": self.key_holders(name, alive),
                          "waiting": sorted(waiters, key=lambda i: self._queue_position_key(i)),
                          "limit": limits.get(name)}
        return view

    def _queue_position_key(self: TaskStore, task_id: str) -> str:
        task = self._load(task_id)
        return (task.queue_key or "~") if task else "~"

    def _queue_head(self: TaskStore, after: str | None, limit: int) -> list[tuple[str, str]]:
        return key_range(self.cache, QUEUE_PREFIX + "-", after=after, limit=limit)

    # --- why a queued task waits ---------------------------------------------------------------

    def why_waiting(self: TaskStore, task: Task) -> dict[str, Any] | None:
        """What a queued task waits for: a retry's time, a concurrency key, or the global cap."""
        return explain_wait(self, task, starter="a worker")

    def _wait_facts(self: TaskStore, task: Task) -> WaitFacts:
        alive = self.alive_workers()
        ahead = self._read(lambda: self.cache._sql(
            "SELECT COUNT(*) FROM Cache WHERE key > ? AND key < ?",
            (QUEUE_PREFIX + "-", task.queue_key or QUEUE_PREFIX + "-~")).fetchone()[0])
        facts = WaitFacts(ahead=ahead, running=self.live_running(alive))
        key = self._key_of(task)
        if key is not None and not self._key_free(task, alive):
            facts.key = key
            facts.key_holders = self.key_holders(key, alive)
            facts.key_limit = self.key_limit(key, task.concurrency.get("limit", 1))
            facts.key_waiters = sorted(self.key_waiters(key), key=self._queue_position_key)
        elif facts.running >= self.max_running:
            facts.slot_holders = [row.rsplit(":", 1)[1] for row, index in self._range(f"{K_STATUS}running:")
                                  if index.get("owner") in alive][:50]
        return facts
