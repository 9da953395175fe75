"""Orchestration verbs (retries, dead letters, pipelines, schedules, resource keys) that have no
Redis side yet: reads answer "none", changes are refused with a clear 409 (README "Scale out")."""

from __future__ import annotations

from typing import Any

from api.errors import Conflict

NOT_YET = ("{what} are not available with ETL_BACKEND=celery yet (scale-out mode runs single steps); "
           "use the local mode for them")


def _refuse(what: str) -> Conflict:
    return Conflict(NOT_YET.format(what=what))


class PendingInRedis:
    """Mixed into RedisStore until these verbs get their Lua scripts."""

    retry_decider: Any = None

    # retries and dead letters
    def release_due(self, limit: int = 200) -> list[str]:
        return []

    def waiting_retries(self) -> int:
        return 0

    def is_dead_letter(self, task_id: str) -> bool:
        return False

    def dead_letter_count(self) -> int:
        return 0

    def dead_letters(self, limit: int = 100) -> list[Any]:
        return []

    def resolve_dead_letter(self, task_id: str, how: str, record: dict[str, Any]) -> None:
        raise _refuse("Dead letters")

    # pipelines
    def start_pipeline(self, parent: Any) -> Any:
        raise _refuse("Pipelines")

    def running_pipelines(self) -> list[str]:
        return []

    def advance_pipeline(self, parent_id: str, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("Pipelines")

    # schedules
    def put_schedule(self, record: dict[str, Any], create: bool) -> bool:
        raise _refuse("Schedules")

    def import_schedules(self) -> int:
        return 0

    def get_schedule(self, schedule_id: str) -> dict[str, Any] | None:
        return None

    def list_schedules(self) -> list[dict[str, Any]]:
        return []

    def delete_schedule(self, schedule_id: str) -> bool:
        raise _refuse("Schedules")

    def update_schedule(self, schedule_id: str, change: Any) -> dict[str, Any] | None:
        raise _refuse("Schedules")

    def fired_task(self, schedule_id: str, occurrence: str) -> str | None:
        return None

    def fire_occurrence(self, *args: Any, **kwargs: Any) -> Any:
        raise _refuse("Schedules")

    def fired_occurrences(self, schedule_id: str, limit: int = 50) -> list[dict[str, str]]:
        return []

    # resource keys (per-step concurrency keys)
    def key_limit(self, key: str, default: int = 1) -> int:
        return default

    def key_holders(self, key: str, alive: set[str] | None = None) -> list[str]:
        return []

    def key_waiters(self, key: str) -> list[str]:
        return []

    def set_key_limit(self, key: str, limit: int | None) -> None:
        raise _refuse("Resource keys")

    def keys_in_use(self) -> dict[str, dict[str, Any]]:
        return {}

    def why_waiting(self, task: Any) -> dict[str, Any] | None:
        return None
