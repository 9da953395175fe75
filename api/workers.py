"""Who a worker process is, and how other processes tell whether it is still alive."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil

HOSTNAME = socket.gethostname()
# A worker whose process exists but has not heartbeaten for this many times the loss limit is hung.
HUNG_AFTER_FACTOR = 20


def process_created(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


# (pid, start time) -> (alive, when checked): admission asks on every submit; /proc is not free.
_checked: dict[tuple[int, float], tuple[bool, float]] = {}
CHECK_CACHE_SECONDS = 0.5


def process_alive(pid: int, created: float) -> bool:
    """Whether the process ``pid`` that started at ``created`` still runs (checked at most every 0.5 s)."""
    now = time.monotonic()
    seen = _checked.get((pid, created))
    if seen is not None and now - seen[1] < CHECK_CACHE_SECONDS:
        return seen[0]
    try:
        alive = abs(psutil.Process(pid).create_time() - created) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        alive = False
    if len(_checked) > 1000:
        _checked.clear()
    _checked[(pid, created)] = (alive, now)
    return alive


@dataclass(frozen=True)
class WorkerInfo:
    id: str
    host: str
    pid: int

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "host": self.host, "pid": self.pid}

    @classmethod
    def this_process(cls) -> WorkerInfo:
        pid = os.getpid()
        return cls(id=f"{HOSTNAME}:{pid}:{uuid.uuid4().hex[:6]}", host=HOSTNAME, pid=pid)
