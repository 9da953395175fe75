"""Reading the local store: task lists, counters, log lines, and waiting for a task to change."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING

from api.store.counters import Counters
from api.store.keys import K_COUNTERS, K_STATUS, K_STEP
from api.task import Task, TaskStatus

if TYPE_CHECKING:
    from api.store.local import TaskStore

# Long-polls check the store for changes made by other workers this often (backing off).
WAIT_FIRST_POLL_SECONDS = 0.002
WAIT_MAX_POLL_SECONDS = 0.05


class Reading:
    """Lists, numbers, logs and long-polls (mixed into TaskStore)."""

    # --- listing and numbers -------------------------------------------------------------

    def list_tasks(self: TaskStore, *, status: TaskStatus | None, step: str | None, limit: int,
                   cursor: str | None) -> tuple[list[Task], str | None]:
        """Newest first, ``limit`` at most, after ``cursor`` (the last id of the previous page).

        A step filter walks that step's own index, so a rare step costs no scan of the others.
        """
        if step is not None:
            page_ids = self._newest_of_step(step, status, limit + 1, cursor)
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

    def _newest_of_step(self: TaskStore, step: str, status: TaskStatus | None, want: int, before: str | None) -> list[str]:
        prefix = f"{K_STEP}{step}:"
        ids: list[str] = []
        page = max(want, 200)
        while len(ids) < want:
            rows = self._range(prefix, before=before, limit=page, newest_first=True)
            batch = [key[len(prefix):] for key, _ in rows]
            if status is not None:
                batch = [i for i in batch if self._get(f"{K_STATUS}{status.value}:{i}") is not None]
            ids += batch
            if len(rows) < page:
                break
            before = rows[-1][0][len(prefix):]
        return ids[:want]

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

    def read_log(self: TaskStore, task_id: str, since: int, limit: int) -> list[str]:
        """Up to ``limit`` log lines of the task after line ``since``."""
        lines: list[str] = []
        try:
            with open(self.paths.log_file(task_id), encoding="utf-8", errors="replace") as log:
                for number, line in enumerate(log, 1):
                    if number > since:
                        lines.append(line.rstrip("\n"))
                        if len(lines) >= limit:
                            break
        except FileNotFoundError:
            pass
        return lines

    async def wait_change(self: TaskStore, task_id: str, timeout: float) -> Task:
        """The task once its state, progress or stop flag changes, or as it is after ``timeout`` s.

        A change made by this process wakes the wait at once; one made by another worker is found
        by checks that start 2 ms apart and back off to 50 ms.
        """
        task = self.get(task_id)
        if task.status.terminal or timeout <= 0:
            return task
        seen = (task.status, task.progress, task.stop_requested)
        deadline = time.monotonic() + timeout
        pause = WAIT_FIRST_POLL_SECONDS
        with self.watch.watch(task_id) as changed:
            while (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(pause, left))
                changed.clear()
                pause = min(pause * 1.5, WAIT_MAX_POLL_SECONDS)
                task = self.get(task_id)
                if (task.status, task.progress, task.stop_requested) != seen:
                    break
        return task
