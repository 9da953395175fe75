"""Grouped admission: the submits of one worker that wait for the store's write lock together are
admitted in one transaction.

A submit first tries the store on the event loop without waiting (the usual case). When another
process holds the write lock it joins this worker's group instead: one thread waits for the lock
once and admits every submit that joined meanwhile, in the order they arrived, with one commit.
Each request still gets its 202 only after the commit that made its task durable; a request the
rules refuse (queue full, rate limit, idempotency conflict) gets its own answer, the others are
admitted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

from api.runner import Runner
from api.task import Task


class AdmissionGroup:
    """The submits of this worker waiting for the write lock (used on the event loop only)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self._waiting: list[tuple[tuple[Any, ...], asyncio.Future]] = []
        self._draining = False

    async def submit(self, *request: Any) -> tuple[Task, bool]:
        """(task, replayed) for one request (the arguments of Runner.submit, without ``wait``)."""
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    answers: list[Any] = await anyio.to_thread.run_sync(
                        self.runner.submit_group, [request for request, _ in group])
                except Exception as exc:  # the store failed: every request of the group hears it
                    answers = [exc] * len(group)
                for (_, future), answer in zip(group, answers):
                    if future.done():
                        continue  # the client went away
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
        finally:
            self._draining = False
