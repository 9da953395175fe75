"""Task files vs Redis on the API hosts: what the local store rebuilds from files, the Redis store
reconciles (Redis is the index; a file whose task Redis no longer knows is marked, or removed
once past its expiry), once per start of each API host."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

import orjson

from api.store.files import write_json_atomic
from api.store.redis import records as R
from api.task import is_task_id, now_iso, parse_iso
from api.workers import HOSTNAME, process_created

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore

logger = logging.getLogger(__name__)

RECONCILE_LEASE_SECONDS = 60.0
BAD_FILES_REPORTED = 20
UNKNOWN_DETAIL = ("Redis holds no record of this task (its data was lost, or another host removed it); "
                  "this file is the only record left")


def _start_of(pid: int) -> str:
    """One start of an API host: the process that started its workers, by pid and start time."""
    return f"{pid}:{process_created(pid)}"


class FileReconciling:
    """Mixed into the Redis store."""

    def is_initialized(self: RedisStore) -> bool:
        return True

    def _reconcile_once(self: RedisStore, owner: str, start: str, done: set[str]) -> None:
        """Reconcile this host's task files with Redis and record ``start``, unless a start in ``done`` did."""
        marker = R.PREFIX + f"meta:reconciled:{HOSTNAME}:{self.paths.root}"
        with self._guarded():
            if self.r.get(marker) in done:
                return
            lease = f"reconcile:{HOSTNAME}:{self.paths.root}"
            if self.acquire_lease(lease, owner, RECONCILE_LEASE_SECONDS):
                try:
                    if self.r.get(marker) not in done:
                        self.reconcile_files()
                        self.r.set(marker, start)
                finally:
                    self.release_lease(lease, owner)

    def reconcile_at_start(self: RedisStore, owner: str) -> None:
        """In the process that starts the API host, before its workers: they skip it for this start."""
        start = _start_of(os.getpid())
        self._reconcile_once(owner, start, {start})

    def ensure_index(self: RedisStore, owner: str, wait_seconds: float = 300.0) -> None:
        """Redis is the index; an API worker reconciles the files only if its start did not (a
        server started without ``prepare_storage``, or Redis lost the marker with its data)."""
        with self._guarded():
            self.r.ping()
        started_by = _start_of(os.getppid())
        # A single-process server is its own start (the process that prepared the storage).
        self._reconcile_once(owner, started_by, {started_by, _start_of(os.getpid())})

    def reconcile_files(self: RedisStore) -> int:
        """Task files whose task Redis no longer knows: expired ones go, the others are marked.

        A marked file (``unknown_to_redis``) is the only record left of its task (Redis lost its
        data, or another host's cleanup removed it early); /health lists them.
        """
        marked: list[dict[str, Any]] = []
        now = time.time()
        with self._guarded():
            for path in sorted(self.paths.root.glob("*.json")):
                if not is_task_id(path.stem) or self.r.exists(R.K_TASK + path.stem):
                    continue
                try:
                    data = orjson.loads(path.read_bytes())
                    expires = data.get("expires_at") if isinstance(data, dict) else None
                    if expires and parse_iso(expires) <= now:
                        path.unlink(missing_ok=True)
                        continue
                except (OSError, ValueError, TypeError):
                    marked.append({"file": path.name, "reason": "unknown to Redis and not a readable task record"})
                    continue
                if isinstance(data, dict) and "unknown_to_redis" not in data:
                    data["unknown_to_redis"] = {"at": now_iso(), "detail": UNKNOWN_DETAIL}
                    write_json_atomic(path, data)
                marked.append({"file": path.name, "reason": "Redis holds no record of this task"})
            self.r.set(R.PREFIX + f"meta:bad_files:{HOSTNAME}:{self.paths.root}", R.dumps(marked[:BAD_FILES_REPORTED]))
        if marked:
            logger.warning("%d task file(s) describe tasks Redis does not know; marked unknown_to_redis", len(marked))
        return len(marked)

    def bad_files(self: RedisStore) -> list[dict[str, Any]]:
        with self._guarded():
            raw = self.r.get(R.PREFIX + f"meta:bad_files:{HOSTNAME}:{self.paths.root}")
            return orjson.loads(raw) if raw else []

    def dirty_count(self: RedisStore) -> int:
        return 0

    def sweep_dirty(self: RedisStore, *args: Any, **kwargs: Any) -> int:
        return 0
