"""The orchestration loop every worker runs: due retries join the queue, pipelines move on, schedules fire.

No state lives here: each pass reads the store, and the store's transactions (and the schedule
lease) make sure that whichever worker acts, it acts once.
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2
PIPELINE_SWEEP_SECONDS = 0.5


class Orchestrator:
    """A daemon thread per worker, stopped by an Event."""

    def __init__(self, store, runner, pipelines, schedules=None) -> None:
        self.store = store
        self.runner = runner
        self.pipelines = pipelines
        self.schedules = schedules
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_pass: float = 0.0

    def start(self) -> None:
        self.last_pass = time.time()
        self._thread = threading.Thread(target=self._loop, name="etl-orchestration", daemon=True)
        self._thread.start()
        if hasattr(self.store, "wait_pipeline_news"):
            # Scale-out mode: nodes end on the worker hosts, and Redis tells one API process at once
            # (the sweep would notice within PIPELINE_SWEEP_SECONDS; locally the finishing worker advances).
            threading.Thread(target=self._follow_news, name="etl-pipeline-news", daemon=True).start()

    def _follow_news(self) -> None:
        while not self._stop.is_set():
            try:
                for parent_id in self.store.wait_pipeline_news(1.0):
                    self.pipelines.advance(parent_id)
            except Exception as exc:
                if self._stop.is_set():
                    return  # the store closed under the wait: shutting down
                logger.warning("pipeline news: %s (retrying)", exc)
                self._stop.wait(1)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.schedules is not None:
            self.schedules.release()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        last_sweep = 0.0
        pause = TICK_SECONDS
        while not self._stop.wait(pause):
            pause = TICK_SECONDS
            now = time.monotonic()
            self.last_pass = time.time()
            try:
                if self.store.release_due():
                    self.runner.wake()
                if now - last_sweep >= PIPELINE_SWEEP_SECONDS:
                    last_sweep = now
                    self.pipelines.sweep()
                if self.schedules is not None:
                    until = self.schedules.tick()
                    if until is not None:
                        # The firing worker wakes for the next occurrence instead of the next tick.
                        pause = min(TICK_SECONDS, until + 0.001)
            except Exception:
                logger.exception("orchestration loop error (retrying)")
