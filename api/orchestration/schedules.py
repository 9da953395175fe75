"""Schedules: cron expressions in a time zone, with business-day rules on the ANBIMA calendar.

Each schedule runs a step or a pipeline. Every worker runs the loop; one holds the
``schedules`` lease and fires. An occurrence is fired through the store (fire_occurrence) under
its key ``<schedule id>:<local time>``, in the same transaction as the run it starts, so a repeat
(another worker, a restart, a lease taken over) finds the same task instead of starting another.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from api.errors import Conflict, InvalidParameters, NotFound
from api.task import Task, mask_secrets, now_iso
from etl import calendar, registry
from etl.errors import UnknownStep

logger = logging.getLogger(__name__)

LEASE = "schedules"
LEASE_SECONDS = 5.0
RENEW_SECONDS = 1.5
FAILURE_BACKOFF_SECONDS = 5.0
# How far ahead a cron expression must fire at least once (on its business-day rule).
HORIZON_DAYS = 800
DEFAULT_TIMEZONE = "America/Sao_Paulo"
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class BusinessDays(BaseModel):
    """Which cron times count, on the ANBIMA calendar."""

    model_config = ConfigDict(extra="forbid")

    rule: Literal["any_day", "business_days", "nth_business_day"] = Field(
        "business_days", description="business_days: only on business days; nth_business_day: only on the Nth "
        "business day of the month (the cron gives the time of day).")
    n: int | None = Field(None, ge=-23, le=23, description="nth_business_day: 1 = first, -1 = last.")
    holiday: Literal["skip", "roll_forward"] = Field(
        "skip", description="business_days: a cron time on a holiday or weekend is skipped, or runs on the next "
        "business day at the same time.")

    @model_validator(mode="after")
    def _n(self) -> BusinessDays:
        if self.rule == "nth_business_day" and not self.n:
            raise ValueError("nth_business_day needs n (1 = first business day, -1 = last)")
        return self


class ScheduleSpec(BaseModel):
    """A schedule as a client sends it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=ID_PATTERN, description="The schedule's name, unique.")
    step: str | None = Field(None, description="Run this step ...")
    pipeline: str | None = Field(None, description="... or this pipeline.")
    parameters: dict[str, Any] = Field(default_factory=dict, description="Step parameters or pipeline run parameters.")
    only: list[str] | None = Field(None, description="Pipeline: only these nodes or tags.")
    cron: str = Field(description="Cron: minute hour day month weekday, or with a leading seconds field.")
    timezone: str = Field(DEFAULT_TIMEZONE, description="IANA time zone the cron is read in.")
    business_days: BusinessDays | None = Field(None, description="Business-day rule (none: every cron time).")
    missed: Literal["skip", "run_once"] = Field(
        "skip", description="After downtime: skip the missed occurrences, or run the latest one once.")
    paused: bool = False

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        value = " ".join(value.split())
        try:
            CronSim(value, dt.datetime(2026, 1, 1))
        except (CronSimError, ValueError) as exc:
            raise ValueError(f"not a cron expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _target(self) -> ScheduleSpec:
        if (self.step is None) == (self.pipeline is None):
            raise ValueError("give either step or pipeline")
        if self.only and self.step:
            raise ValueError("only applies to a pipeline")
        return self


def _zone(record: dict[str, Any]) -> ZoneInfo:
    return ZoneInfo(record.get("timezone") or DEFAULT_TIMEZONE)


def nth_business_day(year: int, month: int, n: int) -> dt.date | None:
    days = [dt.date(year, month, d) for d in range(1, 32) if _valid(year, month, d)]
    business = [d for d in days if calendar.is_business_day(d)]
    index = n - 1 if n > 0 else n
    return business[index] if -len(business) <= index < len(business) else None


def _valid(year: int, month: int, day: int) -> bool:
    try:
        dt.date(year, month, day)
        return True
    except ValueError:
        return False


MAX_CRON_STEPS = 20_000


def occurrences(record: dict[str, Any], after: float, limit: int = 1, horizon_days: int = HORIZON_DAYS) -> list[dt.datetime]:
    """The next ``limit`` occurrences strictly after ``after`` (epoch), as local aware datetimes."""
    zone = _zone(record)
    rule = BusinessDays.model_validate(record["business_days"]) if record.get("business_days") else None
    start = dt.datetime.fromtimestamp(after, zone).replace(microsecond=0)
    rolling = rule is not None and rule.rule == "business_days" and rule.holiday == "roll_forward"
    # A rolled-forward time lands after its cron time: look back a few weeks so none is missed.
    cursor = start - dt.timedelta(days=21) if rolling else start
    end = start + dt.timedelta(days=horizon_days)
    found: list[dt.datetime] = []
    steps = 0
    try:
        while steps < MAX_CRON_STEPS:
            restart = None
            for moment in CronSim(record["cron"], cursor):
                steps += 1
                if moment > end or steps >= MAX_CRON_STEPS:
                    return sorted(found)[:limit]
                when = _apply(rule, moment, zone)
                if when is None:
                    # No cron time counts before the next allowed day: jump there.
                    restart = dt.datetime.combine(_next_allowed_day(rule, moment.date()), dt.time(0), zone)
                    break
                if when.timestamp() > after and when not in found:
                    found.append(when)
                    found.sort()
                if len(found) >= limit and moment >= found[limit - 1]:
                    return found[:limit]
            if restart is None:
                break  # the expression has no further times
            cursor = restart - dt.timedelta(seconds=1)
    except ValueError:  # past the last year of the ANBIMA calendar
        pass
    return found[:limit]


def _next_allowed_day(rule: BusinessDays, day: dt.date) -> dt.date:
    if rule.rule == "business_days":
        return calendar.add_business_days(day, 1)
    year, month = day.year, day.month
    for _ in range(30):
        target = nth_business_day(year, month, rule.n or 1)
        if target is not None and target > day:
            return target
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    raise ValueError("no such business day")


def _apply(rule: BusinessDays | None, moment: dt.datetime, zone: ZoneInfo) -> dt.datetime | None:
    if rule is None or rule.rule == "any_day":
        return moment
    day = moment.date()
    if rule.rule == "nth_business_day":
        return moment if nth_business_day(day.year, day.month, rule.n or 1) == day else None
    if calendar.is_business_day(day):
        return moment
    if rule.holiday == "skip":
        return None
    rolled = calendar.add_business_days(day, 1)
    return dt.datetime.combine(rolled, moment.timetz().replace(tzinfo=None), zone)


def occurrence_key(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds")


class Schedules:
    """CRUD over the store's schedule records, and the firing loop (one worker at a time)."""

    def __init__(self, store, runner, pipelines, settings) -> None:
        self.store = store
        self.runner = runner
        self.pipelines = pipelines
        self.settings = settings
        self.owner = runner.worker.id
        self._renew_at = 0.0
        self._next_try = 0.0
        self._backoff: dict[str, float] = {}  # schedule id -> when to try again after a failure (this worker)
        self.missed_after_seconds = settings.schedule_missed_after_seconds

    # --- CRUD ------------------------------------------------------------------------------

    def check(self, spec: ScheduleSpec) -> None:
        """InvalidParameters naming the field when the schedule cannot run or never fires."""
        errors = []
        if spec.step:
            try:
                step = registry.get_step(spec.step, include_diagnostic=self.settings.diagnostic_steps)
                step.params_model.model_validate(spec.parameters)
            except UnknownStep as exc:
                errors.append({"field": "step", "msg": str(exc)})
            except ValidationError as exc:
                errors += [{"field": ".".join(["parameters", *map(str, e["loc"])]), "msg": e["msg"]}
                           for e in exc.errors()]
        else:
            try:
                pipeline = self.pipelines.load(spec.pipeline)
            except (NotFound, InvalidParameters) as exc:
                raise InvalidParameters(f"Schedule {spec.id} cannot be used: pipeline: {exc.detail}",
                                        errors=[{"field": "pipeline", "msg": exc.detail}]) from None
            unknown = sorted(set(spec.parameters) - set(pipeline.parameters))
            errors += [{"field": f"parameters.{p}", "msg": "not a parameter of the pipeline"} for p in unknown]
            if not unknown:
                errors += [{"field": e["field"], "msg": e["msg"]} for e in self.pipelines.check(pipeline, spec.parameters)]
        if not errors and not occurrences(spec.model_dump(), time.time()):
            errors.append({"field": "cron", "msg": f"never fires in the next {HORIZON_DAYS} days"
                           + (" on its business-day rule" if spec.business_days else "")})
        if errors:
            detail = "; ".join(f"{e['field']}: {e['msg']}" for e in errors)
            raise InvalidParameters(f"Schedule {spec.id} cannot be used: {detail}.", errors=errors)

    def create(self, spec: ScheduleSpec, by: dict[str, Any] | None, replace: bool = False) -> dict[str, Any]:
        self.check(spec)
        record = spec.model_dump()
        earlier = self.store.get_schedule(spec.id)
        record.update(created_at=(earlier or {}).get("created_at") or now_iso(), created_by=(earlier or {}).get("created_by") or by,
                      updated_at=now_iso(), updated_by=by, fired_count=(earlier or {}).get("fired_count", 0),
                      last_fired=(earlier or {}).get("last_fired"), missed_count=(earlier or {}).get("missed_count", 0))
        upcoming = occurrences(record, time.time())
        record["next_due"] = upcoming[0].timestamp() if upcoming else None
        if replace:
            if earlier is None:
                raise NotFound(f"There is no schedule {spec.id!r}.")
            self.store.put_schedule(record, create=False)
        elif not self.store.put_schedule(record, create=True):
            raise Conflict(f"A schedule named {spec.id!r} exists; PUT /schedules/{spec.id} replaces it.")
        return self.describe(record)

    def get(self, schedule_id: str) -> dict[str, Any]:
        record = self.store.get_schedule(schedule_id) if re.fullmatch(ID_PATTERN, schedule_id) else None
        if record is None:
            raise NotFound(f"There is no schedule {schedule_id!r}.")
        return record

    def delete(self, schedule_id: str) -> None:
        self.get(schedule_id)
        self.store.delete_schedule(schedule_id)

    def set_paused(self, schedule_id: str, paused: bool, by: dict[str, Any] | None) -> dict[str, Any]:
        self.get(schedule_id)

        def change(record: dict[str, Any]) -> None:
            record["paused"] = paused
            record["updated_at"], record["updated_by"] = now_iso(), by
            if not paused:  # resuming never fires what was missed while paused
                upcoming = occurrences(record, time.time())
                record["next_due"] = upcoming[0].timestamp() if upcoming else None

        return self.describe(self.store.update_schedule(schedule_id, change))

    def describe(self, record: dict[str, Any], upcoming: int = 5) -> dict[str, Any]:
        view = {k: v for k, v in record.items() if k != "next_due"}
        view["parameters"] = mask_secrets(record.get("parameters"))
        view["next_runs"] = [] if record.get("paused") else [
            occurrence_key(m) for m in occurrences(record, time.time(), upcoming)]
        view["next_due"] = now_iso(record["next_due"]) if record.get("next_due") else None
        view["lease"] = self.store.lease(LEASE)
        return view

    def runs(self, schedule_id: str) -> list[dict[str, str]]:
        self.get(schedule_id)
        return self.store.fired_occurrences(schedule_id)

    # --- firing ----------------------------------------------------------------------------

    def release(self) -> None:
        self.store.release_lease(LEASE, self.owner)

    def _hold(self) -> bool:
        """Whether this worker holds the schedules lease (renewed every RENEW_SECONDS; others retry each second)."""
        now = time.monotonic()
        if now < self._renew_at:
            return True
        if now < self._next_try:
            return False
        if self.store.acquire_lease(LEASE, self.owner, LEASE_SECONDS):
            self._renew_at = now + RENEW_SECONDS
            return True
        self._renew_at = 0.0
        self._next_try = now + 1.0
        return False

    def tick(self) -> float | None:
        """Fire what is due (only on the lease holder); returns the seconds until the next occurrence."""
        if not self._hold():
            return None
        now = time.time()
        soonest = None
        for record in self.store.list_schedules():
            due = record.get("next_due")
            if record.get("paused") or due is None:
                continue
            if due > now:
                soonest = due if soonest is None else min(soonest, due)
                continue
            if self._backoff.get(record["id"], 0.0) > now:
                continue
            try:
                self._fire_due(record, now)
            except Exception:
                # e.g. the queue is full or the store busy: try again in a few seconds, not every tick
                logger.exception("schedule %s: could not fire (retrying in %g s)", record["id"], FAILURE_BACKOFF_SECONDS)
                self._backoff[record["id"]] = now + FAILURE_BACKOFF_SECONDS
                continue
            soonest = now  # look again at once: a late schedule catches up
        return None if soonest is None else max(0.0, soonest - time.time())

    def _fire_due(self, record: dict[str, Any], now: float) -> None:
        schedule_id = record["id"]
        due_moment = dt.datetime.fromtimestamp(record["next_due"], _zone(record))
        # The occurrence after this one, even if that is already due: a late tick catches up one by one.
        upcoming = occurrences(record, record["next_due"])
        next_due = upcoming[0].timestamp() if upcoming else None
        if now - record["next_due"] > self.missed_after_seconds:
            # Downtime: the occurrences between next_due and now were missed.
            latest = occurrences_between(record, record["next_due"] - 1e-3, now)
            upcoming = occurrences(record, now)
            next_due = upcoming[0].timestamp() if upcoming else None
            if record.get("missed") != "run_once" or not latest:
                def skip(r: dict[str, Any]) -> None:
                    r["next_due"] = next_due
                    r["missed_count"] = r.get("missed_count", 0) + len(latest)
                    r["last_missed"] = {"occurrences": [occurrence_key(m) for m in latest[-5:]], "at": now_iso()}

                self.store.update_schedule(schedule_id, skip)
                logger.warning("schedule %s: skipped %d missed occurrence(s)", schedule_id, len(latest))
                return
            due_moment = latest[-1]
        occurrence = occurrence_key(due_moment)
        made: list[Task] = []

        def launch() -> Task:
            task = self._launch(record, occurrence)
            made.append(task)
            return task

        try:
            task_id, fired = self.store.fire_occurrence(schedule_id, occurrence, next_due, launch)
        except (Conflict, InvalidParameters, NotFound) as exc:
            # This occurrence cannot run (a singleton still busy, a definition made invalid since):
            # it is skipped with the reason, and the schedule goes on.
            reason = exc.detail
            self.store.update_schedule(schedule_id, lambda r: r.update(
                next_due=next_due, skipped_count=r.get("skipped_count", 0) + 1,
                last_skipped={"occurrence": occurrence, "reason": reason, "at": now_iso()}))
            logger.warning("schedule %s: occurrence %s skipped: %s", schedule_id, occurrence, reason)
            return
        if not fired:
            self.store.update_schedule(schedule_id, lambda r: r.__setitem__("next_due", next_due))
            return
        late = now - due_moment.timestamp()
        logger.info("schedule %s: fired %s as task %s (%.3f s late)", schedule_id, occurrence, task_id, late)
        task = made[0]
        if task.pipeline is not None:
            self.pipelines.advance(task.task_id)
        elif task.status.value == "running":
            self.runner.launch(task)

    def _launch(self, record: dict[str, Any], occurrence: str) -> Task:
        fired = time.time()
        origin = {"schedule_id": record["id"], "occurrence": occurrence, "fired_at": now_iso(fired),
                  "late_seconds": round(fired - dt.datetime.fromisoformat(occurrence).timestamp(), 3),
                  "fired_by": self.owner}
        by = {"role": "schedule", "name": record["id"]}
        if record.get("pipeline"):
            spec = self.pipelines.load(record["pipeline"])
            return self.pipelines.start_only(spec, record.get("parameters") or {}, record.get("only"), by, origin)
        step = registry.get_step(record["step"], include_diagnostic=self.settings.diagnostic_steps)
        params = step.params_model.model_validate(record.get("parameters") or {})
        task = self.runner.build_task(record["step"], params, {}, by, schedule=origin)
        task, _ = self.store.submit(task, self.runner.worker, None)
        return task


def occurrences_between(record: dict[str, Any], start: float, end: float, limit: int = 1000) -> list[dt.datetime]:
    return [m for m in occurrences(record, start, limit, horizon_days=max(1, int((end - start) / 86400) + 8))
            if m.timestamp() <= end]
