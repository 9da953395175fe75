"""Diagnostic steps (ETL_DIAGNOSTIC_STEPS=1): exercise the service end to end without real data."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from etl import runtime
from etl.errors import DiagnosticFailure, PortalUnavailable
from etl.process import run_command
from etl.registry import step
from etl.secrets import SecretText

logger = logging.getLogger(__name__)

# A child that starts a grandchild, both sleeping: a stop must kill the whole tree.
_TREE_SCRIPT = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(float(%r))" % sys.argv[1]])
print("child pid=%d grandchild pid=%d" % (__import__("os").getpid(), grandchild.pid), flush=True)
time.sleep(float(sys.argv[1]))
"""


class NoopParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    credential: SecretText | None = Field(None, description="May hold ${secret:name}; returned (masked) with the rest.")


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seconds: float = Field(1.0, ge=0, le=86400, description="How long to sleep.")
    mode: Literal["cooperative", "ignore_stop", "subprocess"] = Field(
        "cooperative",
        description="cooperative: checks for a stop every 0.1 s; ignore_stop: never checks "
        "(exercises the stop grace period); subprocess: sleeps in a child process tree.",
    )
    log_every: float = Field(0.0, ge=0, le=3600, description="cooperative mode: also log a numbered line every "
                             "this many seconds (0: never); exercises log following.")


class FailParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: str = Field("diagnostic failure", max_length=10_000, description="The error message to raise.")
    credential: SecretText | None = Field(None, max_length=40, description="May hold ${secret:name}; the error quotes "
                                          "it (exercises the masking of resolved secrets).")


@step("diag_noop", NoopParams, "Do nothing", diagnostic=True)
def diag_noop(params: NoopParams) -> dict[str, Any]:
    """Return the parameters it was given."""
    return params.model_dump(exclude={"credential"} if params.credential is None else None)


@step("diag_sleep", SleepParams, "Sleep", diagnostic=True)
def diag_sleep(params: SleepParams) -> dict[str, Any]:
    """Sleep for `seconds`, reporting progress; honours stop unless told not to."""
    logger.info("sleeping %.3f s (%s)", params.seconds, params.mode)
    started = time.monotonic()
    if params.mode == "subprocess":
        run_command([sys.executable, "-c", _TREE_SCRIPT, str(params.seconds)])
    elif params.mode == "ignore_stop":
        time.sleep(params.seconds)
    else:
        deadline = started + params.seconds
        tick = min(0.1, params.log_every) if params.log_every else 0.1
        next_line, number = started + params.log_every, 0
        while (left := deadline - time.monotonic()) > 0:
            runtime.sleep(min(tick, left))
            runtime.progress(100 * min(1.0, (time.monotonic() - started) / params.seconds))
            if params.log_every and time.monotonic() >= next_line:
                number += 1
                next_line += params.log_every
                logger.info("line %d", number)
    slept = round(time.monotonic() - started, 3)
    logger.info("slept %.3f s", slept)
    return {"slept_seconds": slept}


@step("diag_fail", FailParams, "Fail", diagnostic=True)
def diag_fail(params: FailParams) -> None:
    """Raise an error with `message`."""
    message = f"{params.message} ({params.credential!r})" if params.credential else params.message
    logger.info("failing on purpose: %s", message)
    raise DiagnosticFailure(message)


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Names the attempt counter (shared by all workers).")
    failures: int = Field(1, ge=0, le=100, description="Fail this many calls with this key, then succeed.")
    error: Literal["ConnectionError", "TimeoutError", "PortalUnavailable", "ValueError"] = Field(
        "ConnectionError", description="What the failing calls raise (ValueError: a data error, never retried).")
    seconds: float = Field(0.0, ge=0, le=3600, description="Sleep this long first (honours stop).")
    lock: str | None = Field(None, max_length=64, description="Free text a step policy may use as a concurrency key.")


_FLAKY_ERRORS = {"ConnectionError": ConnectionError, "TimeoutError": TimeoutError,
                 "PortalUnavailable": PortalUnavailable, "ValueError": ValueError}


@step("diag_flaky", FlakyParams, "Fail a few times, then succeed", diagnostic=True)
def diag_flaky(params: FlakyParams) -> dict[str, Any]:
    """Fail the first `failures` calls with `key` (raising `error`), then return the call count."""
    folder = runtime.work_root() / "diag_flaky"
    folder.mkdir(parents=True, exist_ok=True)
    counter = folder / f"{params.key}.count"
    with open(counter, "ab") as marks:  # one byte per call: appends from several processes never collide
        marks.write(b".")
    calls = counter.stat().st_size
    deadline = time.monotonic() + params.seconds
    while (left := deadline - time.monotonic()) > 0:
        runtime.sleep(min(0.1, left))
    if calls <= params.failures:
        logger.info("call %d of key %s fails with %s", calls, params.key, params.error)
        raise _FLAKY_ERRORS[params.error](f"diagnostic {params.error} on call {calls}")
    return {"calls": calls}
