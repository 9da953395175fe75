"""The files of the local store: atomic JSON writes, every path built from a validated id, the file writer."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from api.errors import TaskNotFound
from api.store.cachedb import exact_text
from api.task import is_task_id

logger = logging.getLogger(__name__)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON: temp file, fsync, replace (readers never see half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        # orjson: UTF-8 with accents as they are, indented, and in C (the stdlib's indenting
        # encoder is pure Python and held the GIL long enough to delay every other thread).
        try:
            payload = orjson.dumps(data, default=exact_text, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # what orjson refuses (an int past 64 bits) the stdlib writes
            payload = (json.dumps(data, ensure_ascii=False, indent=2, default=exact_text) + "\n").encode()
        # 0600 on POSIX like the folders (0700): task records may name clients and paths.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        for attempt in range(20):
            try:
                os.replace(tmp, path)
                return
            except PermissionError:
                # Windows refuses to replace a file another process has open; it is brief.
                if attempt == 19:
                    raise
                time.sleep(0.01 * (attempt + 1))
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _inside(root: Path, path: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class StoragePaths:
    """Every file path of the store, built from a validated task id."""

    root: Path
    work_root: Path
    output_root: Path

    @property
    def cache_dir(self) -> Path:
        return self.root / "task_cache"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def _checked(self, task_id: str) -> str:
        if not is_task_id(task_id):
            raise TaskNotFound()
        return task_id

    def task_file(self, task_id: str) -> Path:
        return self.root / f"{self._checked(task_id)}.json"

    def log_file(self, task_id: str) -> Path:
        return self.logs_dir / f"{self._checked(task_id)}.log"

    @property
    def schedules_dir(self) -> Path:
        return self.root / "schedules"

    def schedule_file(self, schedule_id: str) -> Path:
        """The durable copy of a schedule (ids are checked by the schedule model: letters, digits, _ and -)."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", schedule_id):
            raise ValueError(f"not a schedule id: {schedule_id!r}")
        return self.schedules_dir / f"{schedule_id}.json"

    def work_dir(self, task_id: str) -> Path:
        return self.work_root / "tasks" / self._checked(task_id)

    def removable(self, path: str) -> Path | None:
        """``path`` if cleanup may delete it (under the work root, never the output root), else None."""
        candidate = Path(path)
        if _inside(self.work_root, candidate) and not _inside(self.output_root, candidate):
            return candidate
        return None


class FileWriter:
    """Writes task JSON files on a background thread: always the latest state, bursts coalesced.

    Requests answer as soon as the store has committed; the task's file follows within
    milliseconds. A state that will soon change (queued, running) may wait ``delay`` seconds, so
    a short task's file is written once, when it ends, instead of once per transition. A file
    that could not be written stays marked dirty in the store and is written by the next sweep
    (or at the next start).
    """

    def __init__(self, write: Callable[[str], int | None], written: Callable[[dict[str, int]], None]) -> None:
        self._write = write
        self._written = written
        self._pending: dict[str, float] = {}  # task id -> when its file is due (monotonic)
        self._busy = False
        self._hurry = False
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="etl-files", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def enqueue(self, task_id: str, delay: float = 0.0) -> None:
        due = time.monotonic() + delay
        with self._cond:
            self._pending[task_id] = min(due, self._pending.get(task_id, due))
            self._cond.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write every queued file now and wait until they are written."""
        with self._cond:
            self._hurry = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)
            finally:
                self._hurry = False

    def stop(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _take_due(self) -> list[str] | None:
        """The ids whose files are due, waiting until there are some; None when stopping."""
        while True:
            if self._stopping and not self._pending:
                return None
            now = time.monotonic()
            if self._hurry or self._stopping:
                due = list(self._pending)
            else:
                due = [task_id for task_id, at in self._pending.items() if at <= now]
            if due:
                for task_id in due:
                    del self._pending[task_id]
                return due
            self._cond.wait(min(self._pending.values()) - now if self._pending else None)

    def _run(self) -> None:
        while True:
            with self._cond:
                batch = self._take_due()
                if batch is None:
                    return
                self._busy = True
            written: dict[str, int] = {}
            for task_id in batch:
                try:
                    rev = self._write(task_id)
                    if rev is not None:
                        written[task_id] = rev
                except Exception:
                    logger.exception("task %s: could not write its JSON file (will retry)", task_id)
            try:
                if written:
                    self._written(written)
            except Exception:
                logger.exception("could not record %d written task files", len(written))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
