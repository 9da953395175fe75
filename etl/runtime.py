"""What a running step may ask of its surroundings: progress, stop checks, folders, artifacts.

Every function here is a no-op (or a sensible default) when called outside a task, so steps run
the same from the command line as inside the service.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etl import secrets, settings
from etl.errors import StepStopped

LOG_TAIL_LINES = 20

_local = threading.local()


def default_dirs() -> tuple[Path, Path, Path]:
    """(input, output, work) folders from the ETL_* settings, as the service resolves them."""
    current_settings = settings.get_settings()
    return current_settings.input_dir, current_settings.output_dir, current_settings.work_dir


@dataclass
class TaskContext:
    """The state one task's thread shares with the service that runs it."""

    task_id: str
    input_dir: Path
    output_dir: Path
    work_root: Path
    work_dir: Path
    previous_outputs: dict[str, Any] = field(default_factory=dict)
    custom_params: dict[str, Any] = field(default_factory=dict)
    stop_event: threading.Event = field(default_factory=threading.Event)
    stop_reason: str | None = None
    # Monotonic time until which the runner has confirmed that this process still owns the task;
    # past it (the process was paused or cut off) checkpoints stop the step before it does more.
    owned_until: float | None = None
    progress: float = 0.0
    message: str = ""
    artifacts: list[str] = field(default_factory=list)
    log_tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LOG_TAIL_LINES))
    log_lines: int = 0
    log_file: Path | None = None
    _log_stream: Any = None
    changed: threading.Event = field(default_factory=threading.Event)
    _stop_callbacks: list[Callable[[], None]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request_stop(self, reason: str) -> None:
        """Ask the step to stop and kill whatever it registered as killable (idempotent)."""
        with self._lock:
            if self.stop_event.is_set():
                return
            self.stop_reason = reason
            self.stop_event.set()
            callbacks = list(self._stop_callbacks)
        for callback in callbacks:
            with contextlib.suppress(Exception):
                callback()

    def write_log(self, line: str) -> None:
        """Append a line to the task's log file (kept open for the task's life)."""
        if self.log_file is None:
            return
        with self._lock:
            if self._log_stream is None:
                self._log_stream = open(self.log_file, "a", encoding="utf-8")
            self._log_stream.write(line + "\n")
            self._log_stream.flush()
        for part in line.splitlines() or [""]:
            self.log_tail.append(part)
        self.log_lines += line.count("\n") + 1
        self.changed.set()

    def close_log(self) -> None:
        with self._lock:
            if self._log_stream is not None:
                self._log_stream.close()
                self._log_stream = None

    def task_work_dir(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return self.work_dir


def current() -> TaskContext | None:
    """The context of the task running in this thread, or None outside a task."""
    return getattr(_local, "context", None)


@contextlib.contextmanager
def bind(context: TaskContext) -> Iterator[TaskContext]:
    """Make ``context`` the current task context of this thread."""
    previous = current()
    _local.context = context
    try:
        yield context
    finally:
        _local.context = previous


def progress(percent: float, message: str | None = None) -> None:
    """Report progress (0-100) and an optional message."""
    context = current()
    if context is None:
        return
    context.progress = max(0.0, min(100.0, float(percent)))
    if message is not None:
        context.message = message
    context.changed.set()


def stop_requested() -> bool:
    context = current()
    if context is None:
        return False
    if context.owned_until is not None and time.monotonic() > context.owned_until:
        context.request_stop("lost")
    return context.stop_event.is_set()


def check_stop() -> None:
    """A checkpoint: raise StepStopped if a stop was requested."""
    if stop_requested():
        raise StepStopped()


def sleep(seconds: float) -> None:
    """Sleep, waking at once (with StepStopped) if a stop is requested."""
    context = current()
    if context is None:
        threading.Event().wait(seconds)
        return
    if stop_requested() or context.stop_event.wait(seconds) or stop_requested():
        raise StepStopped()


@contextlib.contextmanager
def on_stop(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback`` (from another thread) if a stop arrives while the block runs.

    For work that cannot reach a checkpoint: a subprocess, a browser, a blocking query.
    """
    context = current()
    if context is None:
        yield
        return
    with context._lock:
        context._stop_callbacks.append(callback)
        already = context.stop_event.is_set()
    if already:
        callback()
    try:
        yield
    finally:
        with context._lock:
            context._stop_callbacks.remove(callback)


def add_artifact(path: str | os.PathLike[str]) -> None:
    """Record a file the step wrote, so the task lists it (and cleanup knows it)."""
    context = current()
    if context is not None:
        context.artifacts.append(str(Path(path).resolve()))
        context.changed.set()


def previous_outputs() -> dict[str, Any]:
    context = current()
    return context.previous_outputs if context is not None else {}


def custom_params() -> dict[str, Any]:
    context = current()
    return context.custom_params if context is not None else {}


def input_dir() -> Path:
    context = current()
    return context.input_dir if context is not None else default_dirs()[0]


def output_dir() -> Path:
    context = current()
    path = context.output_dir if context is not None else default_dirs()[1]
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_root() -> Path:
    """ETL_WORK_DIR: intermediate data shared by the steps of one run (removed with the TTL)."""
    context = current()
    path = context.work_root if context is not None else default_dirs()[2]
    path.mkdir(parents=True, exist_ok=True)
    return path


def work_dir() -> Path:
    """This task's private scratch folder (removed with the task), or the work root outside a task."""
    context = current()
    if context is not None:
        return context.task_work_dir()
    path = default_dirs()[2]
    path.mkdir(parents=True, exist_ok=True)
    return path


class TaskLogHandler(logging.Handler):
    """Sends records logged by a task's thread to that task's log file and log tail."""

    def emit(self, record: logging.LogRecord) -> None:
        context = current()
        if context is None or context.log_file is None:
            return
        try:
            context.write_log(secrets.mask_text(self.format(record)))
        except Exception:
            self.handleError(record)
