"""Back-office utility steps: the ANBIMA business-day calendar and the allow-listed Trustee run."""

from __future__ import annotations

import datetime as dt
import re
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from etl import calendar, runtime, settings
from etl.errors import EtlError
from etl.process import run_command
from etl.registry import step

SAMPLE_TRUSTEE = {"sample": [sys.executable, str(Path(__file__).resolve().parents[1] / "samples" / "trustee" /
                                                  "trustee_sample.py")]}


class BusinessDaysParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    date: dt.date | None = Field(None, description="The day to start from, dd/mm/yyyy or yyyy-mm-dd (default: today).")
    end: dt.date | None = Field(None, description="List the business days from `date` to `end` (both included) and "
                                                  "count the market's DU (date excluded, end included).")
    offset: int | None = Field(None, ge=-5000, le=5000, description="Step this many business days from `date`.")

    @field_validator("date", "end", mode="before")
    @classmethod
    def _brazilian_date(cls, value: object) -> object:
        if isinstance(value, str) and re.fullmatch(r"\s*\d{1,2}/\d{1,2}/\d{4}\s*", value):
            try:
                return dt.datetime.strptime(value.strip(), "%d/%m/%Y").date()
            except ValueError:
                raise ValueError(f"{value!r} is not a date (dd/mm/yyyy)") from None
        return value

    @model_validator(mode="after")
    def _one_question(self) -> BusinessDaysParams:
        if self.end is not None and self.offset is not None:
            raise ValueError("give either end or offset, not both")
        if self.end is not None and self.date is not None and self.end < self.date:
            raise ValueError("end is before date")
        return self


@step("business_days", BusinessDaysParams, "ANBIMA business days")
def business_days(params: BusinessDaysParams) -> dict[str, Any]:
    """Whether a day is a business day on the ANBIMA calendar, its neighbours, a list or an offset."""
    day = params.date or dt.date.today()
    try:
        result: dict[str, Any] = {
            "date": day.isoformat(),
            "calendar": f"ANBIMA national holidays ({len(calendar.holidays())} dates, "
                        f"{calendar.holidays()[0].year}-{calendar.holidays()[-1].year})",
            "is_business_day": calendar.is_business_day(day),
            "previous_business_day": calendar.previous_business_day(day).isoformat(),
            "next_business_day": calendar.add_business_days(day, 1).isoformat(),
        }
        if params.offset is not None:
            result["offset"] = params.offset
            result["result"] = calendar.add_business_days(day, params.offset).isoformat()
        if params.end is not None:
            days = [day + dt.timedelta(days=n) for n in range((params.end - day).days + 1)]
            listed = [d.isoformat() for d in days if calendar.is_business_day(d)]
            result["business_days"] = listed
            result["count"] = len(listed)
            result["du"] = calendar.business_days_between(day, params.end)
            result["conventions"] = {
                "count": "business days listed, date and end both included",
                "du": "DU as the market counts it (ANBIMA, B3): business days after date up to and including end",
            }
    except ValueError as exc:
        raise EtlError(str(exc)) from None
    return result


def allowed_commands() -> dict[str, list[str]]:
    """ETL_TRUSTEE_COMMANDS: a JSON object of name -> command line (a list); the sample by default."""
    return settings.get_settings().trustee_command_map or SAMPLE_TRUSTEE


class TrusteeParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str = Field("sample", pattern=r"^[A-Za-z0-9_.-]+$",
                         description="Name of an allow-listed command (ETL_TRUSTEE_COMMANDS); never a command line.")
    run_date: dt.date | None = Field(None, description="Passed to the command as --date dd/mm/yyyy.")
    timeout_seconds: float | None = Field(None, gt=0, le=86400)


@step("trustee_run", TrusteeParams, "Run the Trustee script")
def trustee_run(params: TrusteeParams) -> dict[str, Any]:
    """Run an allow-listed external command; its output goes to the task log; a non-zero exit fails."""
    commands = allowed_commands()
    if params.command not in commands:
        raise EtlError(f"{params.command!r} is not an allowed command (allowed: {', '.join(sorted(commands))})")
    args = list(commands[params.command])
    if params.run_date:
        args += ["--date", f"{params.run_date:%d/%m/%Y}"]
    started = dt.datetime.now()
    runtime.progress(5, f"running {params.command}")
    run_command(args, cwd=settings.get_settings().trustee_cwd, timeout_seconds=params.timeout_seconds)
    return {"command": params.command, "exit_code": 0,
            "duration_seconds": round((dt.datetime.now() - started).total_seconds(), 3)}
