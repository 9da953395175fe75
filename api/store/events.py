"""The change feed: one small row per committed change of a task, numbered in commit order.

Every state change, progress save and stop request of a task is written inside the same
transaction as the change, so a stream opened on any worker sees the changes every worker makes,
in one global order, and can resume after a given event id. Log lines are not copied here: they
are read from the task's log file, numbered by line, and each event says how many lines the log
had when it was written (``log_lines``).

The feed is a ring of ``EVENT_LOG_SIZE`` rows: event ``n`` overwrites slot ``n % EVENT_LOG_SIZE``,
and the last id lives in the counters document that a state change writes anyway. So a change
costs one extra row, updated in place (an inserted row with its index entry cost four times as
much per commit), and the feed never needs trimming.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from api.store.cachedb import get_many, put
from api.store.counters import Counters
from api.store.keys import K_COUNTERS, K_EVENTS
from api.task import Task, TaskStatus

if TYPE_CHECKING:
    from api.store.local import TaskStore

EVENT_LOG_SIZE = 20_000
_READ_ROWS = 500


def _slot(seq: int) -> str:
    return f"{K_EVENTS}{seq % EVENT_LOG_SIZE:06d}"


def event_of(task: Task, kind: str) -> dict[str, Any]:
    """The feed row for ``task`` as it is now (also the snapshot a new stream starts with)."""
    event: dict[str, Any] = {
        "task_id": task.task_id, "step_name": task.step_name, "kind": kind, "status": task.status.value,
        "progress": round(task.progress, 1), "message": task.message, "log_lines": task.log_lines,
        "stop_requested": task.stop_requested, "at": round(time.time(), 3),
    }
    if kind == "status" and task.history:
        event["reason"] = task.history[-1].get("reason")
    if task.stopped_by:
        event["stopped_by"] = task.stopped_by
    if task.status.terminal:
        event["duration_seconds"] = task.duration_seconds
        event["error_type"] = task.error["type"] if task.error else None
    return event


class EventLog:
    """Appending to and reading the change feed (mixed into TaskStore)."""

    def _record_event(self: TaskStore, task: Task, previous: TaskStatus | None, history_before: int | None,
                      counters: Counters) -> int:
        """Inside the write transaction of the change (``counters`` is saved by the caller); returns its id."""
        grew = history_before is not None and len(task.history) > history_before
        kind = "status" if previous is not task.status or grew else "progress"
        seq = counters.data.get("event_seq", 0) + 1
        counters.data["event_seq"] = seq
        put(self.cache, _slot(seq), {"id": seq, **event_of(task, kind)})
        return seq

    def last_event_id(self: TaskStore) -> int:
        """The id of the newest event (0 before the first)."""
        return (self._get(K_COUNTERS) or {}).get("event_seq", 0)

    def first_event_id(self: TaskStore) -> int:
        """The id of the oldest event still kept (0 when the feed is empty)."""
        last = self.last_event_id()
        return max(1, last - EVENT_LOG_SIZE + 1) if last else 0

    def events_after(self: TaskStore, task_id: str | None, after: int, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` events with an id above ``after``, oldest first; only ``task_id``'s if given.

        A task filter reads the feed from ``after`` on (at most EVENT_LOG_SIZE rows); live streams
        are fed by one reader per process instead. A slot already overwritten by a newer event is
        skipped (its event fell off the feed).
        """
        last = self.last_event_id()
        seq = max(after, last - EVENT_LOG_SIZE)
        found: list[dict[str, Any]] = []
        while seq < last and len(found) < limit:
            wanted = range(seq + 1, min(last, seq + _READ_ROWS) + 1)
            keys = [_slot(n) for n in wanted]
            rows = self._read(lambda keys=keys: get_many(self.cache, keys))
            for n in wanted:
                event = rows.get(_slot(n))
                if event is not None and event.get("id") == n and (task_id is None or event["task_id"] == task_id):
                    found.append(event)
                    if len(found) >= limit:
                        break
            seq = wanted[-1]
        return found
