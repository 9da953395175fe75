"""Per-step policies: the retry policy and the concurrency key of every task of a step.

Read from ETL_STEP_POLICIES_FILE (JSON: step name -> {"retry": {...}, "concurrency": {...}}),
checked at start (a bad file stops the worker with a clear message) and re-read when it
changes, so limits and retries change without a restart. A pipeline node's own ``retry`` or
``concurrency`` wins over its step's.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.orchestration.retries import RetryPolicy

logger = logging.getLogger(__name__)

KEY_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:/{}\\ -]{0,199}$"


class Concurrency(BaseModel):
    """At most ``limit`` tasks with the same key run at once; the others wait in FIFO order."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(pattern=KEY_PATTERN, description="e.g. portal:maps or access:{database} ({name}: a parameter).")
    limit: int = Field(1, ge=1, le=1000, description="Default limit (PUT /keys/{key} changes it while running).")
    mode: Literal["queue", "singleton"] = Field(
        "queue", description="queue: wait for the key; singleton: refuse (409) while a task holds or awaits it.")

    def resolve(self, params: dict[str, Any]) -> str | None:
        """The key with ``{name}`` replaced by the task's parameter values (None: a named parameter is unset,
        so the task takes no key)."""
        names = re.findall(r"\{([A-Za-z0-9_]+)\}", self.key)
        if any(params.get(name) in (None, "") for name in names):
            return None
        return re.sub(r"\{([A-Za-z0-9_]+)\}", lambda m: str(params[m.group(1)]), self.key)

    def for_task(self, params: dict[str, Any]) -> dict[str, Any] | None:
        key = self.resolve(params)
        return {**self.model_dump(), "key": key} if key is not None else None


class StepPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retry: RetryPolicy | None = None
    concurrency: Concurrency | None = None


class PolicyError(Exception):
    """The step policies file cannot be used."""


def parse(data: Any) -> dict[str, StepPolicy]:
    if not isinstance(data, dict):
        raise PolicyError("the file must hold an object: step name -> {retry, concurrency}")
    policies = {}
    for step, value in data.items():
        if step.startswith("_"):
            continue  # "_comment" and the like
        try:
            policies[step] = StepPolicy.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PolicyError(f"step {step}: {problems}") from None
    return policies


class StepPolicies:
    """The file's policies, re-read when its modification time changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._policies: dict[str, StepPolicy] = {}

    def _read(self) -> dict[str, StepPolicy]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            return parse(json.loads(self.path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise PolicyError(f"{self.path}: {exc}") from None
        except PolicyError as exc:
            raise PolicyError(f"{self.path}: {exc}") from None

    def check(self) -> None:
        """At start: PolicyError if the file is bad."""
        with self._lock:
            self._policies = self._read()
            self._stamp = self._mtime()

    def _mtime(self) -> float | None:
        try:
            return self.path.stat().st_mtime if self.path else None
        except OSError:
            return None

    def get(self, step: str) -> StepPolicy:
        with self._lock:
            stamp = self._mtime()
            if stamp != self._stamp:
                try:
                    self._policies = self._read()
                except PolicyError as exc:
                    logger.error("step policies not reloaded, the previous ones stay: %s", exc)
                self._stamp = stamp
            return self._policies.get(step) or StepPolicy()
