"""Server start-up before any worker exists: storage folders, cache repair, index rebuild."""

from __future__ import annotations

import logging
import shutil
import time

from api.auth import KeyRing
from api.settings import PROJECT_ROOT, Settings
from api.cache import CacheCorrupt
from api.store import TaskStore

logger = logging.getLogger(__name__)

SUPPORT_README = PROJECT_ROOT / "task_storage" / "README.txt"


def make_store(settings: Settings) -> TaskStore:
    return TaskStore(
        settings.storage_dir,
        settings.work_dir,
        settings.output_dir,
        ttl_seconds=settings.task_ttl_seconds,
        max_running=settings.max_concurrent_tasks,
        max_queued=settings.max_queued_tasks,
        worker_lost_after_seconds=settings.worker_lost_after_seconds,
        cache_timeout_seconds=settings.cache_timeout_seconds,
    )


DIRTY_BATCH = 500


def prepare_storage(settings: Settings) -> None:
    """Check the keys, create the folders, set aside a corrupt cache, rebuild the index from JSON."""
    KeyRing.from_settings(settings)
    store = make_store(settings)
    try:
        store.open()
    except CacheCorrupt as exc:
        aside = settings.cache_dir.with_name(f"task_cache.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        logger.error("task cache is corrupt (%s); moving it to %s and rebuilding from the JSON files", exc, aside.name)
        settings.cache_dir.rename(aside)
        store.open()
    try:
        readme = settings.storage_dir / "README.txt"
        if not readme.exists() and SUPPORT_README.exists():
            shutil.copyfile(SUPPORT_README, readme)
        if not store.is_initialized():
            store.ensure_index(owner="startup")
        written = 0
        for _ in range(store.dirty_count() // DIRTY_BATCH + 1):
            written += store.sweep_dirty(older_than_seconds=0, limit=DIRTY_BATCH)
        if written:
            logger.info("wrote %d task file(s) that lagged behind the cache", written)
    finally:
        store.close()


def mark_worker_lost(settings: Settings, pid: int) -> list[str]:
    """Fail the running tasks of a worker process that just died (called by Gunicorn's master)."""
    store = make_store(settings)
    store.open()
    try:
        return store.reap_lost(only_pid=pid)
    finally:
        store.close()
