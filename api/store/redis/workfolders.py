"""Worker hosts' task work folders: removed once their task has left Redis (its TTL cleanup ran).

TTL cleanup runs on an API host and removes the task's Redis keys and that host's files; the
folder the step worked in lives on the worker host that ran it, which no API host can reach.
One pool process per worker host (the holder of a lease) sweeps its host's folders instead.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING

from api.store.redis import records as R
from api.task import is_task_id
from api.workers import HOSTNAME

if TYPE_CHECKING:
    from api.store.redis.store import RedisStore

logger = logging.getLogger(__name__)


def sweep_work_folders(store: RedisStore, owner: str, interval_seconds: float) -> int:
    """Remove this host's work folders whose task Redis no longer holds; returns how many went."""
    folder = store.paths.work_root / "tasks"
    # Held for two intervals and renewed by its holder: one sweeper per host, another takes over
    # if it dies.
    if not store.acquire_lease(f"workfolders:{HOSTNAME}:{folder}", owner, 2 * interval_seconds):
        return 0
    try:
        names = [e.name for e in os.scandir(folder) if e.is_dir() and is_task_id(e.name)]
    except FileNotFoundError:
        return 0
    removed = 0
    for start in range(0, len(names), 500):
        batch = names[start:start + 500]
        pipe = store.r.pipeline(transaction=False)
        for name in batch:
            pipe.exists(R.K_TASK + name)
        for name, known in zip(batch, pipe.execute()):
            if not known:
                shutil.rmtree(folder / name, ignore_errors=True)
                removed += 1
    if removed:
        logger.info("removed %d work folder(s) of tasks cleaned up from Redis", removed)
    return removed
