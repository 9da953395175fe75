"""The cleanup scheduler: every worker runs the loop, a lease in the store lets one clean at a time."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.errors import Conflict
from api.store import TaskStore
from api.store.cleanup import LeaseLost
from api.task import now_iso

logger = logging.getLogger(__name__)

LEASE = "cleanup"
LEASE_SECONDS = 60.0
CHECK_SECONDS = 1.0


class Schedule(BaseModel):
    """When cleanup runs: every ``interval_seconds``, or daily at ``hour``:``minute`` in ``timezone``."""

    model_config = ConfigDict(extra="forbid")

    interval_seconds: float | None = Field(None, gt=0, description="Run every N seconds.")
    hour: int | None = Field(None, ge=0, le=23, description="Daily run: hour (v1 form).")
    minute: int | None = Field(None, ge=0, le=59, description="Daily run: minute (v1 form).")
    timezone: str | None = Field(None, description="Daily run: IANA time zone, e.g. America/Sao_Paulo.")

    @model_validator(mode="after")
    def _one_form(self) -> Schedule:
        daily = self.hour is not None or self.minute is not None or self.timezone is not None
        if not daily and self.interval_seconds is None:
            raise ValueError("give interval_seconds, or hour (with optional minute and timezone) for a daily run")
        if daily and self.interval_seconds is not None:
            raise ValueError("give either interval_seconds or hour/minute/timezone, not both")
        if daily:
            if self.hour is None:
                raise ValueError("a daily schedule needs hour (0-23)")
            self.minute = self.minute or 0
            self.timezone = self.timezone or "UTC"
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {self.timezone!r}") from None
        return self

    @property
    def mode(self) -> str:
        return "daily" if self.hour is not None else "interval"

    def next_after(self, moment: float) -> float:
        if self.hour is None:
            return moment + (self.interval_seconds or 300.0)
        zone = ZoneInfo(self.timezone or "UTC")
        local = datetime.fromtimestamp(moment, zone)
        target = local.replace(hour=self.hour, minute=self.minute or 0, second=0, microsecond=0)
        if target.timestamp() <= moment:
            target = (target + timedelta(days=1)).replace(hour=self.hour, minute=self.minute or 0)
        return target.timestamp()


class CleanupScheduler:
    """Runs the store's expiry on schedule; at most one worker at a time holds the lease."""

    def __init__(self, store: TaskStore, owner: str, default_interval_seconds: float,
                 logs_max_bytes: int = 1 << 30) -> None:
        self.store = store
        self.logs_max_bytes = logs_max_bytes
        self.owner = owner
        self.default = Schedule(interval_seconds=default_interval_seconds)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_check: float = 0.0

    def start(self) -> None:
        self.last_check = time.time()
        self._thread = threading.Thread(target=self._loop, name="etl-cleanup", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def schedule(self) -> Schedule:
        data = self.store.cleanup_state()["schedule"]
        return Schedule.model_validate(data) if data else self.default

    def set_schedule(self, schedule: Schedule) -> dict[str, Any]:
        self.store.set_cleanup_schedule(schedule.model_dump(exclude_none=True), schedule.next_after(time.time()))
        return self.describe()

    def describe(self) -> dict[str, Any]:
        state = self.store.cleanup_state()
        schedule = Schedule.model_validate(state["schedule"]) if state["schedule"] else self.default
        last, next_run = state["last"], state["next"]
        return {
            "mode": schedule.mode,
            **schedule.model_dump(exclude_none=True),
            "ttl_hours": self.store.ttl_seconds / 3600.0,
            "last_run": last,
            "last_removed": last["removed"] if last else None,
            "next_run": now_iso(next_run) if next_run else None,
            "lease": self.store.lease(LEASE),
            "recent_runs": state["history"],
        }

    def run_now(self) -> dict[str, Any]:
        """Clean up now on this worker (Conflict if another worker is cleaning)."""
        if not self.store.acquire_lease(LEASE, self.owner, LEASE_SECONDS):
            raise Conflict("Cleanup is already running on another worker; try again in a moment.")
        try:
            return self._clean()
        except LeaseLost as exc:
            raise Conflict(f"Cleanup stopped: {exc}; another worker took over.") from None
        finally:
            self.store.release_lease(LEASE, self.owner)

    def _clean(self) -> dict[str, Any]:
        started = time.time()
        # Each batch renews the lease; a renewal refused (another worker took over after a
        # stall) ends the run, so two cleaners never overlap.
        outcome = self.store.expire(
            between_batches=lambda: self.store.acquire_lease(LEASE, self.owner, LEASE_SECONDS))
        outcome["logs_trimmed"] = self.store.trim_logs(self.logs_max_bytes)
        self.store.forget_dead_workers()
        outcome["duration_seconds"] = round(time.time() - started, 3)
        run = {"at": now_iso(started), "ended_at": now_iso(), "removed": outcome["removed"],
               "freed_bytes": outcome["freed_bytes"], "duration_seconds": outcome["duration_seconds"],
               "worker": self.owner}
        if not self.store.record_cleanup_run(run, self.schedule().next_after(started), LEASE, self.owner):
            raise LeaseLost("the cleanup lease was lost before the run was recorded")
        if outcome["removed"]:
            logger.info("cleanup removed %d expired task(s) in %.2f s", outcome["removed"], outcome["duration_seconds"])
        return outcome

    def _loop(self) -> None:
        check_every = min(CHECK_SECONDS, (self.default.interval_seconds or CHECK_SECONDS) / 2)
        while not self._stop.wait(check_every):
            self.last_check = time.time()
            try:
                next_run = self.store.cleanup_state()["next"]
                if next_run is None:
                    self.store.set_cleanup_next(self.schedule().next_after(time.time()), only_if_unset=True)
                    continue
                if time.time() < next_run or not self.store.acquire_lease(LEASE, self.owner, LEASE_SECONDS):
                    continue
                try:
                    # Another worker may have cleaned between our read and the lease.
                    if time.time() >= (self.store.cleanup_state()["next"] or 0):
                        self._clean()
                finally:
                    self.store.release_lease(LEASE, self.owner)
            except LeaseLost as exc:
                logger.warning("cleanup stopped: %s", exc)
            except Exception:
                logger.exception("cleanup scheduler error (will retry)")
