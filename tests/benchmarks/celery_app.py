"""The Celery peer the benchmark runs beside the service: no-op tasks on a local Redis (BENCH_REDIS_URL).

Results are stored only for ``noop_result`` (the round trip and the status figure wait on them);
``noop_counted`` ignores its result and counts itself in Redis, so the burst can tell when it ended.
"""

from __future__ import annotations

import os

import redis
from celery import Celery

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379")
COUNTER_KEY = "bench:completed"

app = Celery("bench", broker=f"{REDIS_URL}/0", backend=f"{REDIS_URL}/1")
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    broker_pool_limit=32,  # the burst's 16 client threads each hold a producer connection
    result_expires=3600,
)

_counter: redis.Redis | None = None


@app.task(name="noop_result", ignore_result=False)
def noop_result() -> None:
    return None


@app.task(name="noop_counted")
def noop_counted() -> None:
    global _counter
    if _counter is None:  # one connection per pool process, opened after the fork
        _counter = redis.Redis.from_url(f"{REDIS_URL}/2")
    _counter.incr(COUNTER_KEY)
