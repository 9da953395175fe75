"""A task on the server as the client last saw it: wait for it, read its result, raise on failure."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from api.client.errors import ServerUnreachable, ServiceUnavailable, TaskFailed, TaskStopped, TooManyRequests, WaitTimeout
from api.client.events import Event
from api.client.retry import LONG_POLL_SECONDS, MIN_POLL_INTERVAL_SECONDS, TERMINAL, time_left

if TYPE_CHECKING:
    from api.client import Client


class Task:
    """A task on the server, as last seen; ``wait`` refreshes it until it ends."""

    def __init__(self, client: Client, state: dict[str, Any], *, idempotency_key: str | None = None,
                 replayed: bool = False) -> None:
        self.client = client
        self.state = state
        self.task_id: str = state["task_id"]
        self.idempotency_key = idempotency_key
        self.replayed = replayed  # the server answered an earlier submit with the same key

    def __repr__(self) -> str:
        return f"<Task {self.task_id} {self.step_name} {self.status}>"

    @property
    def status(self) -> str:
        return self.state["status"]

    @property
    def step_name(self) -> str:
        return self.state.get("step_name", "")

    @property
    def progress(self) -> float:
        return self.state.get("progress") or 0.0

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    def refresh(self) -> Task:
        self.state = self.client.status(self.task_id)
        return self

    def wait(self, timeout: float | None = None) -> Task:
        """Wait until the task ends (long-polls); WaitTimeout with the task id after ``timeout``."""
        self._wait(None if timeout is None else time.monotonic() + timeout)
        return self

    def _wait(self, deadline: float | None) -> None:
        polled = None
        while not self.ended:
            left = time_left(deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(f"Task {self.task_id} is still {self.status} after the time allowed; "
                                  "it keeps running.", task_id=self.task_id, status=self.status)
            if polled is not None and (pause := MIN_POLL_INTERVAL_SECONDS - (time.monotonic() - polled)) > 0:
                time.sleep(pause if left is None else min(pause, left))
            polled = time.monotonic()
            wait = LONG_POLL_SECONDS if left is None else max(0.001, min(LONG_POLL_SECONDS, left))
            try:
                self.state = self.client.status(self.task_id, wait=wait, deadline=deadline)
            except (ServerUnreachable, ServiceUnavailable, TooManyRequests) as exc:
                left = time_left(deadline)
                if left is not None and left <= 0:
                    # The caller's time ran out while the server could not answer: still a timeout
                    # that names the task (it may well be running), never an anonymous failure.
                    raise WaitTimeout(f"Task {self.task_id} was last seen {self.status}; the time allowed ran out "
                                      f"while the server could not answer ({exc}).",
                                      task_id=self.task_id, status=self.status) from exc
                if isinstance(exc, ServerUnreachable):
                    exc.task_id = self.task_id
                raise

    def raise_for_status(self) -> Task:
        """Raise TaskFailed or TaskStopped if the task ended so; return the task otherwise."""
        if self.status == "failed":
            error = self.state.get("error") or {}
            raise TaskFailed(f"Task {self.task_id} ({self.step_name}) failed: {error.get('type', 'Error')}: "
                             f"{error.get('message', self.state.get('message', ''))}",
                             task_id=self.task_id, state=self.state)
        if self.status == "stopped":
            raise TaskStopped(f"Task {self.task_id} ({self.step_name}) was stopped: {self.state.get('message', '')}",
                              task_id=self.task_id, state=self.state)
        return self

    def result(self, timeout: float | None = None) -> Any:
        """The step's result, once the task completed (waits for it; raises if it failed or was stopped)."""
        self.wait(timeout).raise_for_status()
        if "output" in self.state:
            return self.state["output"]
        return self.client.output(self.task_id).get("result")

    def output(self) -> dict[str, Any]:
        return self.client.output(self.task_id)

    def logs(self, since: int = 0) -> dict[str, Any]:
        return self.client.logs(self.task_id, since)

    def follow(self, since: int = 0, timeout: float | None = None) -> Iterator[Event]:
        for event in self.client.follow(self.task_id, since=since, timeout=timeout):
            if event.type in ("status", "end") and "status" in event.data:
                self.state = {**self.state, **event.data}
            yield event

    def stop(self) -> dict[str, Any]:
        return self.client.stop(self.task_id)
