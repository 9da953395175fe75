"""Retry policies: how many attempts, how long between them, and which errors are worth retrying."""

from __future__ import annotations

import datetime as dt
import random
import time
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.task import Task
from etl import calendar

# Errors that say "try again later", never "your request is wrong": a connection refused or reset,
# a timeout, a portal that is down, a worker that died under the task.
TRANSIENT_ERRORS = ("ConnectionError", "ConnectionRefusedError", "ConnectionResetError", "ConnectionAbortedError",
                    "TimeoutError", "Timeout", "WorkerLost", "PortalUnavailable", "TransientError")


class RetryPolicy(BaseModel):
    """Retry a failed attempt after ``backoff_seconds * backoff_factor ** (attempt - 1)`` (± jitter)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(3, ge=1, le=50, description="Attempts in all, the first included.")
    backoff_seconds: float = Field(5.0, ge=0, le=86400, description="Wait before the second attempt.")
    backoff_factor: float = Field(2.0, ge=1, le=10, description="Each further wait is this many times longer.")
    max_backoff_seconds: float = Field(3600.0, ge=0, le=7 * 86400, description="No wait is longer than this.")
    jitter: float = Field(0.2, ge=0, le=1, description="Each wait varies by up to this fraction, so retries spread out.")
    retry_on: list[str] = Field(default_factory=lambda: list(TRANSIENT_ERRORS),
                                description="Error types (exception class names, or a base class such as "
                                            "TransientError) that are retried; others fail at once.")
    next_business_day_at: str | None = Field(
        None, pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="Instead of backing off, try again on the next ANBIMA business day at this time (HH:MM) "
                    "in `timezone` (a portal that publishes once a day).")
    timezone: str = Field("America/Sao_Paulo", max_length=64, description="Time zone of next_business_day_at.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    def seconds_to_next_business_day(self, now: float) -> float:
        zone = ZoneInfo(self.timezone)
        today = dt.datetime.fromtimestamp(now, zone).date()
        day = calendar.add_business_days(today, 1)
        hour, minute = map(int, (self.next_business_day_at or "07:00").split(":"))
        return max(0.0, dt.datetime.combine(day, dt.time(hour, minute), zone).timestamp() - now)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after ``attempt`` failed."""
        base = min(self.max_backoff_seconds, self.backoff_seconds * self.backoff_factor ** (attempt - 1))
        spread = base * self.jitter
        return max(0.0, base + (rng or random).uniform(-spread, spread))


def decide(task: Task, error: dict[str, Any]) -> float | None:
    """Seconds until the task's next attempt, or None when it must fail now (the store's retry decider)."""
    if not task.retry:
        return None
    policy = RetryPolicy.model_validate(task.retry)
    kinds = {error.get("type"), *(error.get("kinds") or [])}
    if task.attempt >= policy.max_attempts or not kinds & set(policy.retry_on):
        return None
    if task.stop_requested:
        return None
    if policy.next_business_day_at:
        return policy.seconds_to_next_business_day(time.time())
    return policy.delay(task.attempt)


def rerun(store, runner, old: Task, requested_by: dict[str, Any] | None) -> Task:
    """A new attempt of an ended, failed or stopped task: same step and inputs, the next ``attempt``,
    linked both ways (``retry_of`` / ``retried_as``). A repeat of the request finds the same task."""
    from api.errors import WrongState
    from api.task import TaskStatus, new_task_id, now_iso

    if not old.status.terminal:
        raise WrongState(f"Task {old.task_id} is still {old.status.value}; retry it once it ended.",
                         status=old.status.value)
    if old.status is TaskStatus.COMPLETED:
        raise WrongState(f"Task {old.task_id} completed; there is nothing to retry.", status="completed")
    if old.retried_as:
        return store.get(old.retried_as["task_id"])
    task_id = new_task_id()
    task = Task(task_id=task_id, step_name=old.step_name, status=TaskStatus.QUEUED, created_at=now_iso(),
                params=old.params, secret_fields=old.secret_fields, previous_outputs=old.previous_outputs,
                custom_params=old.custom_params,
                log_file=str(store.paths.log_file(task_id)), requested_by=requested_by, retry=old.retry,
                retry_of=old.task_id, attempt=old.attempt + 1, attempts=old.attempts + [
                    {"attempt": old.attempt, "task_id": old.task_id, "started_at": old.started_at,
                     "ended_at": old.completed_at, "status": old.status.value,
                     "error": {k: v for k, v in (old.error or {}).items() if k != "traceback"} or None}])
    # The old id is the idempotency key: two retries of the same dead letter make one task.
    task, replayed = store.submit(task, runner.worker, (f"retry:{old.task_id}", "retry"))
    if not replayed:
        if task.status is TaskStatus.RUNNING:
            runner.launch(task)
        else:
            runner.wake()
    return task
