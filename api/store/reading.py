"""Reading the local store: task lists, counters, log lines, and waiting for a task to change."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from api.errors import TaskNotFound
from api.store.cachedb import NOT_INLINE, encode, get_many, get_raw
from api.store.counters import Counters
from api.store.keys import K_COUNTERS, K_STATUS, K_STEP, K_TASK
from api.task import Task, TaskStatus, is_task_id, parse_iso

if TYPE_CHECKING:
    from api.store.local import TaskStore

# A step + status filter examines at most this many of the step's tasks per page.
STEP_SCAN_LIMIT = 20_000
# Long-polls check the store for changes made by other workers this often (backing off).
WAIT_FIRST_POLL_SECONDS = 0.002
WAIT_MAX_POLL_SECONDS = 0.05
# Encoded /status bodies of ended tasks kept per process (about 1 kB each).
STATUS_BODIES_KEPT = 2048


class Reading:
    """Lists, numbers, logs and long-polls (mixed into TaskStore)."""

    # --- listing and numbers -------------------------------------------------------------

    def list_tasks(self: TaskStore, *, status: TaskStatus | None, step: str | None, limit: int,
                   cursor: str | None) -> tuple[list[Task], str | None]:
        """Newest first, ``limit`` at most, after ``cursor`` (the last id of the previous page).

        A step filter walks that step's own index, so a rare step costs no scan of the others.
        """
        if step is not None:
            page_ids, stopped_at = self._newest_of_step(step, status, limit + 1, cursor)
            if stopped_at is not None:
                tasks = [t for t in (self._load(i) for i in page_ids) if t is not None]
                return tasks, stopped_at
        else:
            found: set[str] = set()
            for state in [status] if status else list(TaskStatus):
                prefix = f"{K_STATUS}{state.value}:"
                rows = self._range(prefix, before=cursor, limit=limit + 1, newest_first=True)
                found.update(key[len(prefix):] for key, _ in rows)
            page_ids = sorted(found, reverse=True)[: limit + 1]
        tasks = [t for t in (self._load(i) for i in page_ids[:limit]) if t is not None]
        next_cursor = page_ids[limit - 1] if len(page_ids) > limit else None
        return tasks, next_cursor

    def _newest_of_step(self: TaskStore, step: str, status: TaskStatus | None, want: int,
                        before: str | None) -> tuple[list[str], str | None]:
        """Up to ``want`` ids of ``step`` (in ``status``), newest first, and where the scan stopped
        if it examined STEP_SCAN_LIMIT tasks first (a page may then be short: continue from there)."""
        prefix = f"{K_STEP}{step}:"
        ids: list[str] = []
        page = max(want, 500)
        scanned = 0
        while len(ids) < want:
            rows = self._range(prefix, before=before, limit=page, newest_first=True)
            batch = [key[len(prefix):] for key, _ in rows]
            if status is not None and batch:
                marks = f"{K_STATUS}{status.value}:"
                found = self._read(lambda: get_many(self.cache, [marks + i for i in batch]))
                batch = [i for i in batch if marks + i in found]
            ids += batch
            scanned += len(rows)
            if len(rows) < page:
                break
            before = rows[-1][0][len(prefix):]
            if scanned >= STEP_SCAN_LIMIT and len(ids) < want:
                return ids, before
        return ids[:want], None

    def status_answer(self: TaskStore, task_id: str) -> Task | bytes:
        """GET /status without waiting: an ended task's encoded view (bytes), else the task.

        An ended task's view no longer changes, so its bytes are kept and served again while the
        task's stored row is the same text (one indexed read, no decoding): a change or removal
        of the row by any process is seen at once. TaskNotFound as for ``get``.
        """
        if not is_task_id(task_id):
            raise TaskNotFound()
        text = self._read(lambda: get_raw(self.cache, K_TASK + task_id))
        if text is None:
            raise TaskNotFound()
        if text is NOT_INLINE:
            return self.get(task_id)
        kept = self._status_bodies.get(task_id)
        if kept is not None and kept[0] == text:
            if kept[1] <= time.time():
                raise TaskNotFound()
            return kept[2]
        task = Task.from_dict(orjson.loads(text))
        if task.expired():
            raise TaskNotFound()
        if not task.status.terminal:
            return task
        body = encode(task.status_view()).encode()
        if len(self._status_bodies) >= STATUS_BODIES_KEPT:
            self._status_bodies.clear()
        self._status_bodies[task_id] = (text, parse_iso(task.expires_at) if task.expires_at else math.inf, body)
        return body

    def counters(self: TaskStore) -> Counters:
        """Every count /stats and /metrics report (one read, whatever the number of tasks)."""
        return Counters(self._get(K_COUNTERS))

    def cache_size_bytes(self: TaskStore) -> int:
        total = 0
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.paths.cache_dir):
                if entry.is_file():
                    total += entry.stat().st_size
        return total

    def read_log(self: TaskStore, task_id: str, since: int, limit: int, include_partial: bool = True) -> list[str]:
        """Up to ``limit`` log lines of the task after line ``since``; a line still being written
        (no newline yet) only with ``include_partial`` (for an ended task)."""
        return self._logs.read(self.paths.log_file(task_id), since, limit, include_partial)

    def log_path(self: TaskStore, task_id: str) -> Path | None:
        """The task's full log file for a download (None when the task wrote no log)."""
        self.get(task_id)
        path = self.paths.log_file(task_id)
        return path if path.is_file() else None

    async def wait_change(self: TaskStore, task_id: str, timeout: float) -> Task:
        """The task once its state, progress or stop flag changes, or as it is after ``timeout`` s.

        A change made by this process wakes the wait at once; one made by another worker is found
        by checks that start 2 ms apart and back off to 50 ms.
        """
        with self.watch.watch(task_id) as changed:
            return await wait_for_change(self.get, task_id, timeout, changed)


async def wait_for_change(get: Callable[[str], Task], task_id: str, timeout: float,
                          changed: asyncio.Event | None = None, *, first_poll: float = WAIT_FIRST_POLL_SECONDS,
                          max_poll: float = WAIT_MAX_POLL_SECONDS) -> Task:
    """Poll ``get`` with a back-off until the task's state, progress or stop flag changes (or
    ``timeout`` passes); ``changed``, set by a change the process hears of, cuts a pause short."""
    task = get(task_id)
    if task.status.terminal or timeout <= 0:
        return task
    seen = (task.status, task.progress, task.stop_requested)
    deadline = time.monotonic() + timeout
    pause = first_poll
    while (left := deadline - time.monotonic()) > 0:
        if changed is None:
            await asyncio.sleep(min(pause, left))
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(pause, left))
            changed.clear()
        pause = min(pause * 1.5, max_poll)
        task = get(task_id)
        if (task.status, task.progress, task.stop_requested) != seen:
            break
    return task
