"""Concurrency keys (resource locks) and why a queued task waits, in Redis (mixed into RedisStore).

The admission scripts (scripts.py: SUBMIT, RESERVE) take a key unit together with the global
slot: a task with a key holds one unit from its dispatch to its end (``keyheld:<key>``) and waits
for it while queued (``keywait:<key>``, in queue order). RESERVE skips a task whose key is at its
limit, keeping its place, so tasks with the same key start in FIFO order and the others use the
free slots meanwhile. A limit set at run time (``keylimit``) is read at every admission.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from api.store.redis import records as R
from api.store.resources import Resources, retry_wait
from api.task import Task, TaskStatus, now_iso

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore


class RedisResources:
    """Concurrency keys and "why waiting" (mixed into RedisStore)."""

    @staticmethod
    def _key_of(task: Task) -> str | None:
        return (task.concurrency or {}).get("key")

    def key_limit(self: RedisStore, key: str, default: int = 1) -> int:
        with self._guarded():
            limit = self.r.hget(R.K_KEY_LIMIT, key)
        return int(limit) if limit is not None else default

    def key_holders(self: RedisStore, key: str, alive: set[str] | None = None) -> list[str]:
        """Tasks dispatched or running with ``key`` (a lost worker's task frees it when it is reaped)."""
        with self._guarded():
            return sorted(self.r.smembers(R.K_KEY_HELD + key))

    def key_waiters(self: RedisStore, key: str) -> list[str]:
        """Queued tasks waiting for ``key``, in queue order."""
        with self._guarded():
            return self.r.zrange(R.K_KEY_WAIT + key, 0, -1)

    def set_key_limit(self: RedisStore, key: str, limit: int | None) -> None:
        """Change a key's limit now, for every host (None: back to the steps' default)."""
        with self._guarded():
            if limit is None:
                self.r.hdel(R.K_KEY_LIMIT, key)
            else:
                self.r.hset(R.K_KEY_LIMIT, key, int(limit))

    def keys_in_use(self: RedisStore) -> dict[str, dict[str, Any]]:
        """Every key held, awaited or given a limit: holders, waiters (FIFO order) and limit."""
        with self._guarded():
            limits = {name: int(value) for name, value in self.r.hgetall(R.K_KEY_LIMIT).items()}
            names = set(self.r.hvals(R.K_TASK_KEY)) | set(limits)
        view = {}
        for name in sorted(names):
            holders, waiters = self.key_holders(name), self.key_waiters(name)
            if holders or waiters or name in limits:
                view[name] = {"holders": holders, "waiting": waiters, "limit": limits.get(name)}
        return view

    # --- why a queued task waits ---------------------------------------------------------------

    def why_waiting(self: RedisStore, task: Task) -> dict[str, Any] | None:
        """What a queued task waits for: a retry's time, a concurrency key, or the global cap."""
        if task.status is not TaskStatus.QUEUED:
            return None
        counters = self.counters()
        p50 = counters.duration_quantile(task.step_name, 0.5)
        if task.retry_due:
            return retry_wait(task)
        with self._guarded():
            position = self.r.lpos(R.K_QUEUE, task.task_id)
        ahead = position if position is not None else self.queued_count()
        running = self.live_running()
        cap = self.max_running
        view: dict[str, Any] = {"queue_position": ahead + 1, "tasks_ahead": ahead, "running": running,
                                "max_concurrent_tasks": cap, "step_p50_seconds": p50}
        key = self._key_of(task)
        holders = self.key_holders(key) if key is not None else []
        limit = self.key_limit(key, task.concurrency.get("limit", 1)) if key is not None else 0
        if key is not None and len(holders) >= limit:
            waiters = self.key_waiters(key)
            before = waiters.index(task.task_id) if task.task_id in waiters else 0
            view.update(reason="concurrency_key", key=key, key_limit=limit, blocked_by=holders,
                        waiting_for_key_ahead=before,
                        detail=f"key {key} is held by {len(holders)} task(s) (limit {limit}); "
                               f"{before} task(s) wait for it before this one")
            wait, basis = Resources._estimate(self, holders, before, limit, counters, p50)
        elif running >= cap:
            with self._guarded():
                holders = sorted(self.r.zrange(R.K_RUNNING, 0, 49))
            view.update(reason="global_cap", blocked_by=holders,
                        detail=f"all {cap} slots are taken; {ahead} task(s) are ahead in the queue")
            wait, basis = Resources._estimate(self, holders, ahead, cap, counters, p50)
        else:
            view.update(reason="starting", blocked_by=[], detail="a slot is free; a host is starting it")
            wait, basis = 0.0, "a slot is free"
        view["estimated_start"] = now_iso(time.time() + wait) if wait is not None else None
        view["estimate_basis"] = basis
        return view
