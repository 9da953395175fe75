"""The API side of scale-out mode: the same surface as Runner, but steps run on Celery worker hosts.

Submitting admits the task in Redis and, once it wins a slot, publishes it (the store's dispatch
hook). A control loop per API process heartbeats, dispatches queued tasks as slots free (the
finishing worker does too), and fails tasks whose lease ran out as WorkerLost.
"""

from __future__ import annotations

import logging
import threading
import time

from api.celery_worker import configure, publish
from api.runner import Runner
from api.settings import Settings
from api.store import TaskStore
from api.task import Task, now_iso

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.2
REAP_SECONDS = 0.5


class CeleryRunner(Runner):
    """Admission and dispatch for this API process; no step runs here."""

    def __init__(self, store: TaskStore, settings: Settings) -> None:
        super().__init__(store, settings)
        configure(settings)
        store.dispatch = publish

    def start(self) -> None:
        self.store.seed_shared_settings()
        self.store.start_file_writer()
        self.store.start_change_listener()
        self.store.heartbeat(self.worker, role="api", started_at=now_iso(), running=0)
        self._loop_thread = threading.Thread(target=self._loop, name="etl-dispatch", daemon=True)
        self._loop_thread.start()
        logger.info("API process %s ready (steps run on the Celery worker hosts)", self.worker.id)

    def shutdown(self, wait_seconds: float) -> None:
        """Stop dispatching; tasks keep running on the worker hosts."""
        self._closing.set()
        self._wake.set()
        if self._loop_thread is not None:
            self._loop_thread.join(2)
        self.store.stop_change_listener()
        try:
            self.store.forget_worker(self.worker)
        except Exception as exc:
            logger.warning("could not remove this process's heartbeat: %s", exc)

    def launch(self, task: Task) -> None:
        """Nothing to start here: the store published the task when it won its slot (Runner.launch
        would run the step in this API process as well)."""

    def _loop(self) -> None:
        last_beat = last_reap = 0.0
        while not self._closing.is_set():
            try:
                now = time.monotonic()
                if now - last_beat >= self.settings.heartbeat_interval_seconds:
                    last_beat = now
                    self.store.heartbeat(self.worker, role="api", running=0)
                if now - last_reap >= REAP_SECONDS:
                    last_reap = now
                    self.store.reap_lost()
                while self.store.claim_next() is not None:
                    pass
            except Exception as exc:
                logger.warning("dispatch loop: %s (retrying)", exc)
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
