"""The store: the one seam through which every piece of shared task state passes.

``TaskStore`` (local.py) keeps it in diskcache plus one JSON file per task; ``RedisStore``
(redis/, ETL_BACKEND=celery) keeps it in Redis, with the same verbs. Routes, the
runner, the scheduler and the monitor use only its named verbs: submit, claim_next, finish,
request_stop, control, save_progress, read_log, wait_change, heartbeat, reap_lost,
leases, cleanup state, listing and counters, the change feed (events_after, last_event_id,
first_event_id) and the dashboard's session_secret.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from api.store.local import StoreBusy, TaskStore

if TYPE_CHECKING:
    from api.settings import Settings

__all__ = ["StoreBusy", "TaskStore", "make_store"]


def make_store(settings: Settings) -> TaskStore:
    """The store the settings describe (not opened yet: open it in the process that uses it).

    Every store a process makes applies the tasks' retry policies, whichever process fails a task
    (its runner, another worker finding it lost, Gunicorn's arbiter on a child's exit).
    ``ETL_BACKEND=celery``: the Redis store (api/store/redis/), with the same verbs.
    """
    from api.orchestration.retries import decide

    if settings.backend == "celery":
        from api.store.redis import RedisStore

        store = RedisStore(  # type: ignore[assignment]
            settings.redis_url, settings.storage_dir, settings.work_dir, settings.output_dir,
            ttl_seconds=settings.task_ttl_seconds, max_running=settings.max_concurrent_tasks,
            max_queued=settings.max_queued_tasks, worker_lost_after_seconds=settings.worker_lost_after_seconds,
            lease_seconds=settings.lease_seconds,
        )
        store.retry_decider = decide
        return store
    store = TaskStore(
        settings.storage_dir,
        settings.work_dir,
        settings.output_dir,
        ttl_seconds=settings.task_ttl_seconds,
        max_running=settings.max_concurrent_tasks,
        max_queued=settings.max_queued_tasks,
        worker_lost_after_seconds=settings.worker_lost_after_seconds,
        cache_timeout_seconds=settings.cache_timeout_seconds,
    )
    store.retry_decider = decide
    return store
