"""Schedule records and the occurrences they fired, in Redis (mixed into RedisStore).

Firing an occurrence at most once: the run is submitted with the occurrence as its idempotency
key, so the admission script itself refuses a second run of it (whichever API process fires, and
also after a firer died between submitting and recording); the record of the fire and the
schedule's next due time are then written once, in one MULTI guarded by WATCH.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import redis

from api.store.redis import records as R
from api.task import Task, now_iso

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore

logger = logging.getLogger(__name__)

FIRED_KEPT = 5000  # occurrences remembered per schedule (GET /schedules/{id}/runs shows the newest)

_firing = threading.local()  # the occurrence this thread is firing (read by submit and start_pipeline)


class RedisSchedules:
    """Schedules and fired occurrences (mixed into RedisStore)."""

    def put_schedule(self: RedisStore, record: dict[str, Any], create: bool) -> bool:
        """Store a schedule record; with ``create``, False if its id is taken."""
        with self._guarded():
            if create:
                return bool(self.r.hsetnx(R.K_SCHEDULES, record["id"], R.dumps(record)))
            self.r.hset(R.K_SCHEDULES, record["id"], R.dumps(record))
        return True

    def import_schedules(self: RedisStore) -> int:
        return 0  # Redis is the record of schedules (no files to rebuild from)

    def get_schedule(self: RedisStore, schedule_id: str) -> dict[str, Any] | None:
        with self._guarded():
            raw = self.r.hget(R.K_SCHEDULES, schedule_id)
        return orjson.loads(raw) if raw is not None else None

    def list_schedules(self: RedisStore) -> list[dict[str, Any]]:
        with self._guarded():
            rows = self.r.hgetall(R.K_SCHEDULES)
        return [orjson.loads(rows[name]) for name in sorted(rows)]

    def delete_schedule(self: RedisStore, schedule_id: str) -> bool:
        with self._guarded():
            return bool(self.r.hdel(R.K_SCHEDULES, schedule_id))

    def update_schedule(self: RedisStore, schedule_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Apply ``change`` to the record, retried if another process changed it meanwhile."""
        found: list[dict[str, Any] | None] = [None]

        def apply(pipe: redis.client.Pipeline) -> None:
            raw = pipe.hget(R.K_SCHEDULES, schedule_id)
            found[0] = None
            if raw is None:
                return
            record = orjson.loads(raw)
            change(record)
            found[0] = record
            pipe.multi()
            pipe.hset(R.K_SCHEDULES, schedule_id, R.dumps(record))

        with self._guarded():
            self.r.transaction(apply, R.K_SCHEDULES)
        return found[0]

    def fired_task(self: RedisStore, schedule_id: str, occurrence: str) -> str | None:
        with self._guarded():
            return self.r.hget(R.K_FIRED + schedule_id, occurrence)

    def fire_occurrence(self: RedisStore, schedule_id: str, occurrence: str, next_due: float | None,
                        launch: Callable[[], Task]) -> tuple[str, bool]:
        """Fire one occurrence of a schedule at most once, whichever process asks and however often.

        ``launch`` submits the run; returns (task id, fired now).
        """
        seen = self.fired_task(schedule_id, occurrence)
        if seen is not None:
            return seen, False
        _firing.key, _firing.replayed = f"fire:{schedule_id}:{occurrence}", False
        try:
            task = launch()
        finally:
            _firing.key = None
        fired_now = not _firing.replayed
        fired_key, order_key = R.K_FIRED + schedule_id, R.K_FIRED_ORDER + schedule_id

        def record(pipe: redis.client.Pipeline) -> None:
            if pipe.hexists(fired_key, occurrence):
                return
            raw = pipe.hget(R.K_SCHEDULES, schedule_id)
            pipe.multi()
            pipe.hset(fired_key, occurrence, task.task_id)
            pipe.zadd(order_key, {occurrence: dt.datetime.fromisoformat(occurrence).timestamp()})
            pipe.zremrangebyrank(order_key, 0, -FIRED_KEPT - 1)
            if raw is not None:
                schedule = orjson.loads(raw)
                schedule["last_fired"] = {"occurrence": occurrence, "task_id": task.task_id, "at": now_iso()}
                schedule["next_due"] = next_due
                schedule["fired_count"] = schedule.get("fired_count", 0) + 1
                pipe.hset(R.K_SCHEDULES, schedule_id, R.dumps(schedule))

        with self._guarded():
            self.r.transaction(record, fired_key, R.K_SCHEDULES)
        return task.task_id, fired_now

    def fired_occurrences(self: RedisStore, schedule_id: str, limit: int = 50) -> list[dict[str, str]]:
        with self._guarded():
            occurrences = self.r.zrevrange(R.K_FIRED_ORDER + schedule_id, 0, limit - 1)
            ids = self.r.hmget(R.K_FIRED + schedule_id, occurrences) if occurrences else []
        return [{"occurrence": o, "task_id": t} for o, t in zip(occurrences, ids) if t is not None]

    # --- what submit and start_pipeline read while an occurrence fires -----------------------

    @staticmethod
    def _fire_idempotency() -> tuple[str, str] | None:
        key = getattr(_firing, "key", None)
        return (key, "schedule") if key else None

    @staticmethod
    def _fire_replayed() -> None:
        if getattr(_firing, "key", None):
            _firing.replayed = True
