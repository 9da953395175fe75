"""The Redis store's reading, liveness, leases, cleanup and JSON-file verbs (mixed into RedisStore)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import orjson
import redis

from api.errors import StorageUnavailable
from api.store.cleanup import HISTORY_RUNS, Cleanup
from api.store.counters import Counters
from api.store.events import EVENT_LOG_SIZE
from api.store.files import write_json_atomic
from api.store.reading import wait_for_change
from api.store.redis import records as R
from api.store.redis.changes import ChangeListener
from api.store.redis.mirror import FileMirror
from api.store.redis.reconcile import FileReconciling
from api.store.redis.stats import StatsSnapshot
from api.task import Task, TaskStatus
from api.workers import WorkerInfo

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore

logger = logging.getLogger(__name__)

# While the change stream wakes long-polls, Redis is polled only in case a wake-up went astray.
FALLBACK_FIRST_POLL_SECONDS = 0.1
FALLBACK_MAX_POLL_SECONDS = 0.5


def _json(raw: str | None) -> Any:
    return orjson.loads(raw) if raw is not None else None


class RedisExtras(FileReconciling):
    # --- listing and numbers -------------------------------------------------------------

    def list_tasks(self: RedisStore, *, status: TaskStatus | None, step: str | None, limit: int,
                   cursor: str | None) -> tuple[list[Task], str | None]:
        """Newest first from the step's, the status's or the whole index; ``cursor`` is the last id seen."""
        with self._guarded():
            key = R.K_STEP + step if step is not None else (R.K_STATUS + status.value if status else R.K_ALL)
            wanted = status if step is not None else None
            high = f"({cursor}" if cursor else "+"
            found: list[Task] = []
            more = False
            page = max(limit + 1, 200) if wanted else limit + 1
            while True:
                ids = self.r.zrevrangebylex(key, high, "-", start=0, num=page)
                if not ids:
                    break
                pipe = self.r.pipeline(transaction=False)
                for task_id in ids:
                    pipe.hget(R.K_TASK + task_id, "json")
                for raw in pipe.execute():
                    if raw is None:
                        continue
                    task = R.decode(raw)
                    if wanted is None or task.status is wanted:
                        if len(found) == limit:
                            more = True
                            break
                        found.append(task)
                if more or len(ids) < page:
                    break
                high = f"({ids[-1]}"
            return found, (found[-1].task_id if more and found else None)

    def stats_snapshot(self: RedisStore) -> StatsSnapshot:
        """Everything /stats reads, in one round trip."""
        return StatsSnapshot(self)

    def counters(self: RedisStore) -> Counters:
        with self._guarded():
            return R.counters_from(self.r.hgetall(R.K_COUNTERS))

    def cache_size_bytes(self: RedisStore) -> int:
        with self._guarded():
            return int(self.r.info("memory").get("used_memory", 0))

    def read_log(self: RedisStore, task_id: str, since: int, limit: int, include_partial: bool = True) -> list[str]:
        """Log lines after line ``since`` (held in Redis, so no shared filesystem is needed; the
        worker ships whole lines only, so there is never a partial one)."""
        with self._guarded():
            return self.r.lrange(R.K_LOG + task_id, since, since + limit - 1)

    async def wait_change(self: RedisStore, task_id: str, timeout: float) -> Task:
        """The task once its state, progress or stop flag changes, or after ``timeout`` s.

        While the change stream is followed (ChangeListener) a change made on any host wakes the
        wait; Redis is then polled only as a fallback. Otherwise it polls, backing off.
        """
        with self.watch.watch(task_id) as changed:
            if self._listener is not None and self._listener.following.is_set():
                return await wait_for_change(self.get, task_id, timeout, changed,
                                             first_poll=FALLBACK_FIRST_POLL_SECONDS, max_poll=FALLBACK_MAX_POLL_SECONDS)
            return await wait_for_change(self.get, task_id, timeout, changed)

    def start_change_listener(self: RedisStore) -> None:
        """API processes: long-polls and event streams wake on changes made by any host."""
        self._listener = ChangeListener(self)
        self._listener.start()

    def stop_change_listener(self: RedisStore) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    @contextlib.contextmanager
    def _guarded(self: RedisStore):
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise StorageUnavailable(f"The task store (Redis) cannot be reached: {exc}.") from exc
        except redis.RedisError as exc:
            raise StorageUnavailable(f"The task store (Redis) refused the request: {exc}.") from exc

    # --- the change feed (GET /events), the session secret, log files ---------------------

    def last_event_id(self: RedisStore) -> int:
        with self._guarded():
            return int(self.r.get(R.PREFIX + "event_seq") or 0)

    def first_event_id(self: RedisStore) -> int:
        last = self.last_event_id()
        return max(1, last - EVENT_LOG_SIZE + 1) if last else 0

    def events_after(self: RedisStore, task_id: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events with an id above ``after``, oldest first; only ``task_id``'s if given."""
        last = self.last_event_id()
        seq = max(after, last - EVENT_LOG_SIZE)
        found: list[dict[str, Any]] = []
        with self._guarded():
            while seq < last and len(found) < limit:
                wanted = range(seq + 1, min(last, seq + 500) + 1)
                rows = self.r.mget([f"{R.PREFIX}event:{n % EVENT_LOG_SIZE}" for n in wanted])
                for n, raw in zip(wanted, rows):
                    event = orjson.loads(raw) if raw else None
                    if event is not None and event.get("id") == n and (task_id is None or event["task_id"] == task_id):
                        found.append(event)
                        if len(found) >= limit:
                            break
                seq = wanted[-1]
        return found

    def session_secret(self: RedisStore) -> bytes:
        """Shared by every API host (a dashboard login works whichever host answers)."""
        with self._guarded():
            self.r.set(R.PREFIX + "session_secret", secrets.token_hex(32), nx=True)
            return bytes.fromhex(self.r.get(R.PREFIX + "session_secret"))

    def log_path(self: RedisStore, task_id: str) -> None:
        """No log file on the API hosts: the lines are in Redis (GET /logs)."""
        return None

    # --- workers -------------------------------------------------------------------------

    def heartbeat(self: RedisStore, worker: WorkerInfo, **extra: Any) -> None:
        with self._guarded():
            beat = {**worker.as_dict(), **extra}
            beat.pop("at", None)
            self._run("HEARTBEAT", worker.id, R.dumps(beat))

    def forget_worker(self: RedisStore, worker: WorkerInfo) -> None:
        with self._guarded():
            self.r.hdel(R.K_WORKERS, worker.id)

    def workers(self: RedisStore) -> list[dict[str, Any]]:
        with self._guarded():
            return [orjson.loads(raw) for raw in self.r.hvals(R.K_WORKERS)]

    def alive_recently(self: RedisStore) -> set[str]:
        return self.alive_workers()

    def alive_workers(self: RedisStore) -> set[str]:
        """Processes (API and worker hosts) that heartbeat within the loss limit, by Redis time."""
        with self._guarded():
            seconds, micros = self.r.time()
        now = seconds + micros / 1e6
        return {beat["id"] for beat in self.workers() if now - beat.get("at", 0) < self.worker_lost_after_seconds}

    def forget_dead_workers(self: RedisStore, older_than_seconds: float = 3600.0) -> None:
        limit = time.time() - older_than_seconds
        with self._guarded():
            for beat in self.workers():
                if beat.get("at", 0) < limit:
                    self.r.hdel(R.K_WORKERS, beat["id"])

    # --- leases --------------------------------------------------------------------------

    def acquire_lease(self: RedisStore, name: str, owner: str, seconds: float) -> bool:
        with self._guarded():
            return bool(self._run("ACQUIRE_LEASE", name, owner, seconds))

    def release_lease(self: RedisStore, name: str, owner: str) -> None:
        with self._guarded():
            self._run("RELEASE_LEASE", name, owner)

    def lease(self: RedisStore, name: str) -> dict[str, Any] | None:
        with self._guarded():
            return _json(self.r.get(R.K_LEASE + name))

    # --- cleanup -------------------------------------------------------------------------

    def _cleanup_get(self: RedisStore, name: str) -> Any:
        return _json(self.r.get(R.PREFIX + R.K_CLEANUP + name))

    def cleanup_state(self: RedisStore) -> dict[str, Any]:
        with self._guarded():
            return {
                "schedule": self._cleanup_get("schedule"),
                "next": self._cleanup_get("next"),
                "last": self._cleanup_get("last"),
                "history": self._cleanup_get("history") or [],
                "totals": self._cleanup_get("totals") or {"runs": 0, "removed": 0},
            }

    def set_cleanup_schedule(self: RedisStore, schedule: dict[str, Any], next_run: float) -> None:
        with self._guarded():
            self.r.mset({R.PREFIX + R.K_CLEANUP + "schedule": R.dumps(schedule),
                         R.PREFIX + R.K_CLEANUP + "next": R.dumps(next_run)})

    def set_cleanup_next(self: RedisStore, next_run: float, only_if_unset: bool = False) -> None:
        with self._guarded():
            self.r.set(R.PREFIX + R.K_CLEANUP + "next", R.dumps(next_run), nx=only_if_unset)

    def record_cleanup_run(self: RedisStore, run: dict[str, Any], next_run: float, lease: str, owner: str) -> bool:
        with self._guarded():
            state = self.cleanup_state()
            totals = state["totals"]
            pairs = {"last": run, "history": (state["history"] + [run])[-HISTORY_RUNS:], "next": next_run,
                     "totals": {"runs": totals["runs"] + 1, "removed": totals["removed"] + run["removed"]}}
            args: list[Any] = [lease, owner]
            for name, value in pairs.items():
                args += [R.K_CLEANUP + name, R.dumps(value)]
            return bool(self._run("RECORD_WITH_LEASE", *args))

    def expire(self: RedisStore, now: float | None = None, batch: int = 1000, between_batches: Any = None) -> dict[str, Any]:
        """Remove ended tasks past their expiry: every Redis key of theirs, and this host's files."""
        from api.store.cleanup import LeaseLost

        cutoff = time.time() if now is None else now
        removed: list[str] = []
        freed = 0
        with self._guarded():
            while True:
                ids = self.r.zrangebyscore(R.K_EXPIRES, "-inf", cutoff, start=0, num=batch)
                if not ids:
                    break
                raws = self.r.pipeline(transaction=False)
                for task_id in ids:
                    raws.hget(R.K_TASK + task_id, "json")
                doomed = []
                pipe = self.r.pipeline(transaction=True)
                for task_id, raw in zip(ids, raws.execute()):
                    pipe.zrem(R.K_EXPIRES, task_id)
                    if raw is None:
                        continue
                    data = orjson.loads(raw)
                    if not TaskStatus(data["status"]).terminal:
                        continue
                    pipe.delete(R.K_TASK + task_id, R.K_RUN + task_id, R.K_STOP + task_id, R.K_LOG + task_id)
                    if data.get("idempotency_key"):
                        pipe.delete(R.K_IDEM + data["idempotency_key"])
                    pipe.zrem(R.K_STATUS + data["status"], task_id)
                    pipe.zrem(R.K_STEP + data["step_name"], task_id)
                    pipe.zrem(R.K_ALL, task_id)
                    pipe.zrem(R.K_DEAD, task_id)  # an expired dead letter leaves the list with its task
                    pipe.hincrbyfloat(R.K_COUNTERS, R.SEP.join(("now", data["step_name"], data["status"])), -1)
                    doomed.append(data)
                pipe.execute()
                freed += Cleanup._remove_files(self, doomed)
                removed += [data["task_id"] for data in doomed]
                if between_batches is not None and not between_batches():
                    raise LeaseLost(f"the cleanup lease was lost after removing {len(removed)} task(s)")
            stale = R.stale_hour_fields(self.r.hkeys(R.K_COUNTERS))
            if stale:
                self.r.hdel(R.K_COUNTERS, *stale)
        return {"removed": len(removed), "task_ids": removed[:100], "freed_bytes": freed}

    def trim_logs(self: RedisStore, max_bytes: int) -> int:
        return 0  # logs live in Redis, bounded per task, and leave with their task

    # --- the JSON files (written on the API hosts from the change stream) -----------------

    def write_file(self: RedisStore, task_id: str) -> int | None:
        """Write the task's JSON file until it holds the newest revision (other writers may race)."""
        path = self.paths.task_file(task_id)
        for _ in range(10):
            task = self._load(task_id)
            if task is None:
                return None
            write_json_atomic(path, task.file_view())
            if self.r.hget(R.K_TASK + task_id, "rev") == str(task.rev):
                return task.rev
        return None

    def start_file_writer(self: RedisStore) -> None:
        self._mirror = FileMirror(self)
        self._mirror.start()

    def stop_file_writer(self: RedisStore) -> None:
        if self._mirror is not None:
            self._mirror.stop()
            self._mirror = None

    def flush_files(self: RedisStore, timeout: float = 10.0) -> bool:
        return True
