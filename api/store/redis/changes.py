"""Wakes this API process's long-polls and event streams the moment any host commits a change.

Every commit script appends (id, rev) to the change stream (``{etl}:changes``); one thread per API
process follows it with ``XREAD BLOCK`` and tells the process's TaskWatch. A waiter then reads
the task once, instead of polling Redis every few milliseconds for a change made on a worker host.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

import redis

from api.store.redis import records as R

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore

logger = logging.getLogger(__name__)

BLOCK_MS = 1000
BATCH = 1000
RETRY_SECONDS = 0.5
IDLE_CHECK_SECONDS = 1.0
# Idle longer than this, the listener starts again from the newest entry (not the backlog).
CATCH_UP_SECONDS = 5.0


class ChangeListener:
    """Follows the change stream while this process has waiters."""

    def __init__(self, store: RedisStore) -> None:
        self.store = store
        # Set while the stream is followed: waiters then only poll as a fallback.
        self.following = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="etl-changes", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(BLOCK_MS / 1000 + 2)

    def _run(self) -> None:
        r: redis.Redis | None = None
        last: str | None = None  # the newest entry read
        idle_since: float | None = None
        watch = self.store.watch
        while not self._stop.is_set():
            # Read only while someone in this process waits: a burst's changes are then not read
            # by every API process for nothing.
            if not watch.watched.wait(IDLE_CHECK_SECONDS):
                idle_since = idle_since or time.monotonic()
                continue
            try:
                if r is None:
                    r = redis.Redis.from_url(self.store.url, decode_responses=True, socket_connect_timeout=1.0,
                                             socket_timeout=BLOCK_MS / 1000 + 5)
                    last = None
                if last is None or (idle_since is not None and time.monotonic() - idle_since > CATCH_UP_SECONDS):
                    newest = r.xrevrange(R.K_CHANGES, count=1)
                    last = newest[0][0] if newest else "0-0"
                    self.following.set()
                    # A change made before ``last`` (while nobody read the stream) is not read:
                    # every waiter reads its task once more instead.
                    watch.changed_all()
                idle_since = None
                reply = r.xread({R.K_CHANGES: last}, count=BATCH, block=BLOCK_MS)
                for _, entries in reply or []:
                    if entries:
                        last = entries[-1][0]
                    for task_id in dict.fromkeys(fields.get("id", "") for _, fields in entries if fields):
                        watch.changed(task_id)
            except Exception as exc:  # noqa: BLE001 - any failure: reconnect, the waiters poll meanwhile
                if self.following.is_set():
                    logger.warning("task changes cannot be followed: %s (long-polls poll Redis meanwhile)", exc)
                self.following.clear()
                if r is not None:
                    with contextlib.suppress(Exception):
                        r.close()
                r = None
                self._stop.wait(RETRY_SECONDS)
        self.following.clear()
