"""Worker liveness (heartbeats, lost workers) and named leases, in the local store."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from api.errors import StorageUnavailable
from api.store.keys import K_LEASE, K_STATUS, K_WORKER
from api.task import TaskStatus
from api.workers import (
    HOSTNAME,
    HUNG_AFTER_FACTOR,
    WorkerInfo,
    process_alive,
    process_created,
)

if TYPE_CHECKING:
    from api.store.local import TaskStore

logger = logging.getLogger(__name__)

# Admission asks which workers are alive on every submit; the answer is reused this long, so a
# dead worker's slot frees at most this late (its process check is cached 0.5 s anyway).
ALIVE_CACHE_SECONDS = 0.2


class Liveness:
    """Heartbeats and leases (mixed into TaskStore)."""

    # --- workers -------------------------------------------------------------------------

    def heartbeat(self: TaskStore, worker: WorkerInfo, **extra: Any) -> None:
        created = process_created(worker.pid)
        with contextlib.suppress(StorageUnavailable):
            self.check_database()  # found here within a heartbeat even when no task is submitted
        with self._transaction():
            self.cache.set(K_WORKER + worker.id, {**worker.as_dict(), "at": time.time(), "created": created, **extra})

    def forget_worker(self: TaskStore, worker: WorkerInfo) -> None:
        with self._transaction():
            self.cache.delete(K_WORKER + worker.id)

    def workers(self: TaskStore) -> list[dict[str, Any]]:
        return [beat for _, beat in self._range(K_WORKER)]

    def alive_recently(self: TaskStore) -> set[str]:
        """alive_workers(), reused for ALIVE_CACHE_SECONDS in this process (for admission)."""
        seen_at, seen = self._alive_seen
        if 0 <= time.time() - seen_at < ALIVE_CACHE_SECONDS:
            return seen
        return self.alive_workers()

    def alive_workers(self: TaskStore) -> set[str]:
        """Ids of live workers.

        A worker on this machine is alive while its process exists (same pid and start time), so
        a killed worker is seen at once and a busy one is never mistaken for dead; only a silence
        of HUNG_AFTER_FACTOR x the heartbeat limit marks a hung one. Workers elsewhere count by
        heartbeat alone.
        """
        now = time.time()
        alive = set()
        for beat in self.workers():
            age = now - beat.get("at", 0)
            if beat.get("host") == HOSTNAME and beat.get("created") is not None:
                if process_alive(beat["pid"], beat["created"]) and age < HUNG_AFTER_FACTOR * self.worker_lost_after_seconds:
                    alive.add(beat["id"])
            elif age < self.worker_lost_after_seconds:
                alive.add(beat["id"])
        self._alive_seen = (now, alive)
        return alive

    def reap_lost(self: TaskStore, only_pid: int | None = None) -> list[str]:
        """Fail running tasks whose owner stopped heartbeating (or is the given dead pid)."""
        alive = self.alive_workers()
        lost = []
        for key, index in self._range(f"{K_STATUS}running:"):
            task_id = key.rsplit(":", 1)[1]
            if index.get("pipeline"):
                continue
            owner = index.get("owner") or ""
            if only_pid is not None:
                parts = owner.split(":")
                if len(parts) < 3 or parts[-2] != str(only_pid) or ":".join(parts[:-2]) != HOSTNAME:
                    continue
            elif owner in alive:
                continue
            reason = f"worker {owner or 'unknown'} died while running the task"
            done = self.finish(task_id, TaskStatus.FAILED, reason,
                               error={"type": "WorkerLost", "message": reason, "traceback": None})
            if done is not None and done.status is TaskStatus.FAILED and done.error and done.error["type"] == "WorkerLost":
                logger.warning("task %s: %s", task_id, reason)
                lost.append(task_id)
        return lost

    # --- leases --------------------------------------------------------------------------

    def acquire_lease(self: TaskStore, name: str, owner: str, seconds: float) -> bool:
        """Take or renew the lease ``name``; False while another owner holds it."""
        with self._transaction():
            lease = self.cache.get(K_LEASE + name)
            now = time.time()
            if lease is not None and lease["owner"] != owner and lease["expires"] > now:
                return False
            self.cache.set(K_LEASE + name, {"owner": owner, "expires": now + seconds, "at": now})
            return True

    def release_lease(self: TaskStore, name: str, owner: str) -> None:
        with self._transaction():
            lease = self.cache.get(K_LEASE + name)
            if lease is not None and lease["owner"] == owner:
                self.cache.delete(K_LEASE + name)

    def lease(self: TaskStore, name: str) -> dict[str, Any] | None:
        return self._get(K_LEASE + name)
