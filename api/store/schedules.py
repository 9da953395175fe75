"""Schedule records and the occurrences they fired, in the local store.

Each record also has a JSON file (``schedules/<id>.json``) so a lost cache loses no schedule; a
fired occurrence is rebuilt from the ``schedule`` field of its task's file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from api.store.files import write_json_atomic
from api.store.keys import K_FIRED, K_SCHEDULE
from api.task import Task, now_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore

logger = logging.getLogger(__name__)


class ScheduleRecords:
    """Schedules and fired occurrences (mixed into TaskStore)."""

    def put_schedule(self: TaskStore, record: dict[str, Any], create: bool) -> bool:
        """Store a schedule record; with ``create``, False if its id is taken."""
        with self._transaction():
            key = K_SCHEDULE + record["id"]
            if create and self.cache.get(key) is not None:
                return False
            self.cache.set(key, record)
        self._save_schedule_file(record["id"])
        return True

    def _save_schedule_file(self: TaskStore, schedule_id: str) -> None:
        """Schedules are records of the cache with a JSON file each, so a lost cache loses none."""
        record = self._get(K_SCHEDULE + schedule_id)
        path = self.paths.schedule_file(schedule_id)
        with self._guard():
            if record is None:
                path.unlink(missing_ok=True)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                write_json_atomic(path, record)

    def import_schedules(self: TaskStore) -> int:
        """At a rebuild: the schedule records from their files (ids already known are kept)."""
        loaded = 0
        folder = self.paths.schedules_dir
        if not folder.is_dir():
            return 0
        for path in sorted(folder.glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(record, dict) or record.get("id") != path.stem or "cron" not in record:
                    raise ValueError("not a schedule record named after its file")
            except (OSError, ValueError) as exc:
                logger.error("rebuild: skipping schedule file %s: %s", path.name, exc)
                continue
            with self._transaction():
                if self.cache.get(K_SCHEDULE + record["id"]) is None:
                    self.cache.set(K_SCHEDULE + record["id"], record)
                    loaded += 1
        return loaded

    def get_schedule(self: TaskStore, schedule_id: str) -> dict[str, Any] | None:
        return self._get(K_SCHEDULE + schedule_id)

    def list_schedules(self: TaskStore) -> list[dict[str, Any]]:
        return [record for _, record in self._range(K_SCHEDULE)]

    def delete_schedule(self: TaskStore, schedule_id: str) -> bool:
        with self._transaction():
            deleted = bool(self.cache.delete(K_SCHEDULE + schedule_id))
        self._save_schedule_file(schedule_id)
        return deleted

    def update_schedule(self: TaskStore, schedule_id: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        with self._transaction():
            record = self.cache.get(K_SCHEDULE + schedule_id)
            if record is None:
                return None
            change(record)
            self.cache.set(K_SCHEDULE + schedule_id, record)
        self._save_schedule_file(schedule_id)
        return record

    def fired_task(self: TaskStore, schedule_id: str, occurrence: str) -> str | None:
        return self._get(f"{K_FIRED}{schedule_id}:{occurrence}")

    def fire_occurrence(self: TaskStore, schedule_id: str, occurrence: str, next_due: float | None,
                        launch: Callable[[], Task]) -> tuple[str, bool]:
        """Fire one occurrence of a schedule at most once, whichever worker asks and however often.

        ``launch`` submits the run (it may open its own nested transaction). Returns (task id,
        fired now). The occurrence key and the schedule's next due time are written in the same
        transaction as the run, so a worker killed half way leaves either both or neither.
        """
        key = f"{K_FIRED}{schedule_id}:{occurrence}"
        with self._transaction():
            seen = self.cache.get(key)
            if seen is not None:
                return seen, False
            task = launch()
            self.cache.set(key, task.task_id)
            record = self.cache.get(K_SCHEDULE + schedule_id)
            if record is not None:
                record["last_fired"] = {"occurrence": occurrence, "task_id": task.task_id, "at": now_iso()}
                record["next_due"] = next_due
                record["fired_count"] = record.get("fired_count", 0) + 1
                self.cache.set(K_SCHEDULE + schedule_id, record)
        self._save_schedule_file(schedule_id)
        return task.task_id, True

    def fired_occurrences(self: TaskStore, schedule_id: str, limit: int = 50) -> list[dict[str, str]]:
        prefix = f"{K_FIRED}{schedule_id}:"
        return [{"occurrence": key[len(prefix):], "task_id": task_id}
                for key, task_id in self._range(prefix, newest_first=True, limit=limit)]
