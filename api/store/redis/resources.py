"""Concurrency keys (resource locks) and why a queued task waits, in Redis (mixed into RedisStore).

The admission scripts (scripts.py: SUBMIT, RESERVE) take a key unit together with the global
slot: a task with a key holds one unit from its dispatch to its end (``keyheld:<key>``) and waits
for it while queued (``keywait:<key>``, in queue order). RESERVE skips a task whose key is at its
limit, keeping its place, so tasks with the same key start in FIFO order and the others use the
free slots meanwhile. A limit set at run time (``keylimit``) is read at every admission.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from api.store.redis import records as R
from api.store.resources import WaitFacts, explain_wait
from api.task import Task

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
        return explain_wait(self, task, starter="a host")

    def _wait_facts(self: RedisStore, task: Task) -> WaitFacts:
        with self._guarded():
            position = self.r.lpos(R.K_QUEUE, task.task_id)
        ahead = position if position is not None else self.queued_count()
        facts = WaitFacts(ahead=ahead, running=self.live_running())
        key = self._key_of(task)
        holders = self.key_holders(key) if key is not None else []
        limit = self.key_limit(key, task.concurrency.get("limit", 1)) if key is not None else 0
        if key is not None and len(holders) >= limit:
            facts.key, facts.key_holders, facts.key_limit = key, holders, limit
            facts.key_waiters = self.key_waiters(key)
        elif facts.running >= self.max_running:
            with self._guarded():
                facts.slot_holders = sorted(self.r.zrange(R.K_RUNNING, 0, 49))
        return facts
