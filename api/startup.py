"""Server start-up before any worker exists: storage folders, cache repair, index rebuild."""

from __future__ import annotations

import logging
import shutil
import time

from api.auth import KeyRing
from api.errors import StorageUnavailable
from api.orchestration.policies import PolicyError, StepPolicies
from api.settings import PROJECT_ROOT, Settings
from api.store import make_store
from api.store.cachedb import CacheCorrupt, CacheUnavailable

logger = logging.getLogger(__name__)

SUPPORT_README = PROJECT_ROOT / "task_storage" / "README.txt"
DIRTY_BATCH = 500


class StartupError(Exception):
    """The storage cannot be prepared (a clear one-line reason; the start exits non-zero)."""


def prepare_storage(settings: Settings) -> None:
    """Check the keys, create the folders, set aside a corrupt cache, rebuild the index from JSON.

    Only a damaged database is moved aside; a full disk or a permission problem stops the start
    with its reason and leaves the cache as it is.
    """
    KeyRing.from_settings(settings)
    try:
        StepPolicies(settings.step_policies_file).check()
    except PolicyError as exc:
        raise StartupError(f"the step policies cannot be used: {exc}") from None
    store = make_store(settings)
    try:
        store.open()
    except CacheCorrupt as exc:
        aside = settings.cache_dir.with_name(f"task_cache.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        logger.error("task cache is corrupt (%s); moving it to %s and rebuilding from the JSON files", exc, aside.name)
        settings.cache_dir.rename(aside)
        store.open()
    except (CacheUnavailable, OSError) as exc:
        raise StartupError(f"the task store cannot be opened: {exc} (nothing was changed; fix this and start again)")
    try:
        readme = settings.storage_dir / "README.txt"
        if not readme.exists() and SUPPORT_README.exists():
            shutil.copyfile(SUPPORT_README, readme)
        if settings.backend == "celery":
            # Once per start of this API host, here before its workers exist (they skip it then).
            store.reconcile_at_start(owner=f"startup:{time.time_ns()}")
        elif not store.is_initialized():
            store.ensure_index(owner=f"startup:{time.time_ns()}")
        written = 0
        for _ in range(store.dirty_count() // DIRTY_BATCH + 1):
            written += store.sweep_dirty(older_than_seconds=0, limit=DIRTY_BATCH)
        if written:
            logger.info("wrote %d task file(s) that lagged behind the cache", written)
        for bad in store.bad_files():
            logger.warning("task file %s was skipped: %s", bad["file"], bad["reason"])
    except StorageUnavailable as exc:
        raise StartupError(f"the task store cannot be prepared: {exc.detail}") from None
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
