"""Live events for SSE and WebSocket: one reader of the store's change feed per worker process.

The store numbers every change of every task in commit order (api/store/events.py), whichever
worker made it. Each worker process runs one ``EventHub`` reader while it has listeners: it
wakes at once for changes made in this process and checks the feed every ``POLL_SECONDS`` for
the other workers' changes, then hands each event to the listeners whose filter it matches. A
listener keeps at most ``QUEUE_LIMIT`` undelivered events: a client that stops reading is not
given more, and when it reads again its stream catches up from the store (the feed is bounded,
so a listener never holds more memory than that).

A task stream is ``status``/``progress`` events from the feed, ``log`` events read from the
task's log file (numbered by line), and a final ``end``. Its ids are ``<event>-<line>``: a
stream resumed after an id sends exactly what came after it.

When the server stops, its open streams end at once (``end_open_streams``) instead of holding
the shutdown for the whole connection drain; clients reconnect with ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from api.errors import ApiError, BadRequest, TaskNotFound
from api.store import TaskStore
from api.store.events import EVENT_LOG_SIZE, event_of

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.025
QUEUE_LIMIT = 256
BATCH = 500
LOG_BATCH = 1000
RETRY_MILLISECONDS = 2000
TERMINAL = frozenset({"completed", "failed", "stopped"})


@dataclass
class Item:
    """One message of a stream: an SSE event name, its id, and its data."""

    event: str
    id: str
    data: dict[str, Any]


@dataclass(eq=False)
class Listener:
    task_id: str | None = None
    steps: frozenset[str] = frozenset()
    statuses: frozenset[str] = frozenset()
    floor: int = 0  # every event above this id reaches the queue (unless it overflows)
    queue: deque[dict[str, Any]] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    overflowed: bool = False

    def wants(self, event: dict[str, Any]) -> bool:
        if self.task_id is not None:
            return event["task_id"] == self.task_id
        return ((not self.steps or event["step_name"] in self.steps)
                and (not self.statuses or event["status"] in self.statuses))

    def offer(self, event: dict[str, Any]) -> None:
        if self.overflowed:
            return
        if len(self.queue) >= QUEUE_LIMIT:
            self.queue.clear()
            self.overflowed = True
        else:
            self.queue.append(event)
        self.ready.set()


_hubs: weakref.WeakSet[EventHub] = weakref.WeakSet()


def end_open_streams() -> int:
    """End every stream of this process (the server is stopping); how many were open."""
    return sum(hub.end_streams() for hub in list(_hubs))


class EventHub:
    """This process's reader of the change feed (used on the event loop only)."""

    def __init__(self, store: TaskStore) -> None:
        self.store = store
        self.last = 0
        self.closing = False  # the server is stopping: streams end instead of waiting
        self._listeners: set[Listener] = set()
        self._reader: asyncio.Task | None = None
        _hubs.add(self)

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @contextlib.contextmanager
    def listen(self, task_id: str | None = None, steps: frozenset[str] = frozenset(),
               statuses: frozenset[str] = frozenset()) -> Iterator[Listener]:
        if self._reader is None or self._reader.done():
            self.last = self.store.last_event_id()
            self._reader = asyncio.get_running_loop().create_task(self._follow())
        listener = Listener(task_id, steps, statuses, floor=self.last)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    def end_streams(self) -> int:
        """Wake every listener to end its stream; how many there were."""
        self.closing = True
        for listener in self._listeners:
            listener.ready.set()
        return len(self._listeners)

    def close(self) -> None:
        """Stop the reader (at shutdown; open streams are closed by the server)."""
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None

    def resync(self, listener: Listener) -> int:
        """After an overflow: the listener gets events above the current id again; returns that id."""
        listener.overflowed = False
        listener.queue.clear()
        listener.floor = self.last
        return self.last

    async def _follow(self) -> None:
        with self.store.watch.watch_any() as changed:
            while self._listeners:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(changed.wait(), POLL_SECONDS)
                changed.clear()
                try:
                    self._read_new()
                except ApiError as exc:
                    logger.warning("event feed unreadable (%s); retrying", exc.detail)
                    await asyncio.sleep(1.0)

    def _read_new(self) -> None:
        while self._listeners:
            events = self.store.events_after(None, self.last, BATCH)
            if not events:
                newest = self.store.last_event_id()
                if newest < self.last:
                    self.last = newest  # the store was rebuilt and its feed starts again
                return
            for event in events:
                for listener in self._listeners:
                    if listener.wants(event):
                        listener.offer(event)
            self.last = events[-1]["id"]
            if len(events) < BATCH:
                return


def parse_task_cursor(value: str | None) -> tuple[int, int] | None:
    """``<event>-<line>`` (a task stream's id) as numbers; BadRequest when malformed."""
    if not value:
        return None
    seq, _, line = value.strip().partition("-")
    if not (seq.isascii() and seq.isdecimal() and line.isascii() and line.isdecimal()):
        raise BadRequest("Last-Event-ID must be an id this stream sent (<event>-<line>).")
    return int(seq), int(line)


def parse_feed_cursor(value: str | None) -> int | None:
    if not value:
        return None
    if not (value.strip().isascii() and value.strip().isdecimal()):
        raise BadRequest("Last-Event-ID must be an id this stream sent (a number).")
    return int(value)


async def _next_events(hub: EventHub, listener: Listener, cursor: int, task_id: str | None,
                       timeout: float | None = None) -> list[dict[str, Any]]:
    """The next events above ``cursor``: from the queue, or from the store after an overflow
    (none once the server is stopping)."""
    if hub.closing:
        return []
    if not listener.queue and not listener.overflowed:
        listener.ready.clear()
        if timeout is None:
            await listener.ready.wait()
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(listener.ready.wait(), timeout)
    if listener.overflowed:
        upto = hub.resync(listener)
        events = hub.store.events_after(task_id, cursor, BATCH)
        missed = [e for e in events if e["id"] <= upto and listener.wants(e)]
        if len(missed) == BATCH:  # more missed than one batch: the rest next time
            listener.overflowed = True
        return missed
    events = [e for e in listener.queue if e["id"] > cursor]
    listener.queue.clear()
    return events


def _ends(event: dict[str, Any]) -> bool:
    return event["kind"] == "status" and event["status"] in TERMINAL


class TaskStream:
    """The events of one task after a cursor, ending with ``end`` once the task has ended."""

    def __init__(self, store: TaskStore, hub: EventHub, task_id: str, cursor: tuple[int, int] | None,
                 since_line: int = 0) -> None:
        """``cursor``: resume after that id; else start with a snapshot and the log after ``since_line``."""
        self.store, self.hub, self.task_id, self.cursor = store, hub, task_id, cursor
        self.since_line = since_line
        self.seq = 0
        self.line = 0

    def _log_items(self, upto: int) -> Iterator[Item]:
        """The log lines after the last one sent, up to line ``upto`` (the count an event announced)."""
        while self.line < upto:
            lines = self.store.read_log(self.task_id, self.line, min(LOG_BATCH, upto - self.line),
                                        include_partial=False)
            if not lines:
                return
            for text in lines:
                self.line += 1
                yield Item("log", f"{self.seq}-{self.line}", {"task_id": self.task_id, "line": self.line, "text": text})

    def _event_items(self, event: dict[str, Any], snapshot: bool = False) -> Iterator[Item]:
        self.seq = max(self.seq, event.get("id", self.seq))
        data = {k: v for k, v in event.items() if k not in ("kind", "id")}
        if snapshot:
            data["snapshot"] = True
        yield Item(event["kind"], f"{self.seq}-{self.line}", data)
        yield from self._log_items(event["log_lines"])

    async def items(self) -> AsyncIterator[Item]:
        with self.hub.listen(task_id=self.task_id) as listener:
            try:
                task = self.store.get(self.task_id)
            except TaskNotFound:
                yield Item("end", f"{listener.floor}-0", {"task_id": self.task_id, "status": None,
                                                          "detail": "No such task (it never existed or expired)."})
                return
            ended = False
            newest = self.store.last_event_id()
            # An id this store never gave (it was rebuilt since) or one trimmed off the feed: start afresh.
            resumable = (self.cursor is not None
                         and self.store.first_event_id() - 1 <= self.cursor[0] <= newest)
            if resumable:
                self.seq, self.line = self.cursor
                backlog = self.store.events_after(self.task_id, max(0, self.seq - 1), EVENT_LOG_SIZE)
                if backlog and backlog[0]["id"] == self.seq:
                    for item in self._log_items(backlog.pop(0)["log_lines"]):
                        yield item
                for event in backlog:
                    for item in self._event_items(event):
                        yield item
                    if _ends(event):
                        ended = True
                        break
                if not ended and task.status.terminal and task.event_id <= self.seq:
                    # Its end was sent before the cursor: only log lines can be left.
                    for item in self._log_items(task.log_lines):
                        yield item
                    ended = True
            else:
                # Numbered as the task's own latest event, so a resume from any id of it is exact.
                self.seq = task.event_id if 0 < task.event_id <= newest else listener.floor
                self.line = self.cursor[1] if self.cursor else self.since_line
                for item in self._event_items({**event_of(task, "status"), "id": self.seq}, snapshot=True):
                    yield item
                ended = task.status.terminal
            while not ended:
                events = await _next_events(self.hub, listener, self.seq, self.task_id)
                if self.hub.closing:
                    return  # no `end`: the task goes on, and the client resumes elsewhere
                for event in events:
                    for item in self._event_items(event):
                        yield item
                    if _ends(event):
                        ended = True
                        break
            yield Item("end", f"{self.seq}-{self.line}", {"task_id": self.task_id, "status": self._final_status()})

    def _final_status(self) -> str | None:
        with contextlib.suppress(TaskNotFound):
            return self.store.get(self.task_id).status.value
        return None


async def feed_items(store: TaskStore, hub: EventHub, cursor: int | None, steps: frozenset[str],
                     statuses: frozenset[str]) -> AsyncIterator[Item]:
    """Every task's status and progress events (filtered), after ``cursor``; ends only when the server stops."""
    with hub.listen(steps=steps, statuses=statuses) as listener:
        seq = listener.floor
        if cursor is not None and store.first_event_id() - 1 <= cursor <= store.last_event_id():
            seq = cursor
            listener.overflowed = cursor < listener.floor  # read the missed events from the store first
        elif cursor is not None:
            # Too old (trimmed) or from a store since rebuilt: the client must reload what it shows.
            yield Item("reset", str(seq), {"last_event_id": seq, "detail": "Events were missed; reload the list."})
        else:
            yield Item("ready", str(seq), {"last_event_id": seq})
        while not hub.closing:
            for event in await _next_events(hub, listener, seq, None):
                seq = event["id"]
                yield Item(event["kind"], str(seq), {k: v for k, v in event.items() if k != "kind"})
