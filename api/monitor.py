"""What admins see: health checks, statistics and Prometheus metrics, all from the shared store."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from api.deps import Services
from api.errors import StorageUnavailable
from api.scheduler import LEASE_SECONDS
from api.store.counters import DURATION_BUCKETS
from api.task import TaskStatus, parse_iso

CACHE_READ_LIMIT_SECONDS = 2.0
SCHEDULER_SILENT_SECONDS = 10.0


def _check(ok: bool, detail: str) -> dict[str, Any]:
    return {"ok": ok, "detail": detail}


def _storage_writable(services: Services) -> dict[str, Any]:
    probe = services.store.paths.root / f".health-{os.getpid()}"
    try:
        with open(probe, "w", encoding="utf-8") as out:
            out.write("ok")
            out.flush()
            os.fsync(out.fileno())
        probe.unlink()
        return _check(True, "task storage accepts writes")
    except OSError as exc:
        return _check(False, f"task storage is not writable: {exc.strerror or exc}")


def _cache_readable(services: Services) -> dict[str, Any]:
    started = time.monotonic()
    if services.store.lost_reason:
        return _check(False, services.store.lost_reason)
    try:
        services.store.check_database()
        services.store.cleanup_state()
        services.store.queued_count()
    except Exception as exc:
        return _check(False, f"task cache cannot be read: {exc}")
    took = time.monotonic() - started
    if took > CACHE_READ_LIMIT_SECONDS:
        return _check(False, f"task cache read took {took:.1f} s (limit {CACHE_READ_LIMIT_SECONDS:g} s)")
    return _check(True, f"task cache read in {took * 1000:.1f} ms")


def _disk_free(services: Services) -> dict[str, Any]:
    free_mb = shutil.disk_usage(services.store.paths.root).free / 1024 / 1024
    limit = services.settings.min_free_disk_mb
    if free_mb < limit:
        return _check(False, f"{free_mb:.0f} MB free on the storage disk (minimum {limit:g} MB)")
    return _check(True, f"{free_mb:.0f} MB free on the storage disk")


def _scheduler(services: Services) -> dict[str, Any]:
    scheduler = services.scheduler
    if not scheduler.alive or time.time() - scheduler.last_check > SCHEDULER_SILENT_SECONDS:
        return _check(False, "this worker's cleanup scheduler thread is not running")
    next_run = services.store.cleanup_state()["next"]
    if next_run is not None and time.time() > next_run + LEASE_SECONDS + 30:
        return _check(False, f"cleanup is overdue by {time.time() - next_run:.0f} s (no worker ran it)")
    return _check(True, "cleanup scheduler alive and on time")


def _runner(services: Services) -> dict[str, Any]:
    if not services.runner.alive:
        return _check(False, "this worker's task runner thread is not running")
    if services.settings.backend == "celery":
        return _check(True, "dispatch to the worker hosts alive")
    return _check(True, "task runner alive")


def _redis(services: Services) -> dict[str, Any]:
    """Scale-out mode: Redis answers, how fast, and for how long it has been up."""
    started = time.monotonic()
    try:
        uptime = services.store.redis_uptime_seconds()
    except StorageUnavailable as exc:
        return _check(False, exc.detail)
    took = (time.monotonic() - started) * 1000
    return _check(True, f"Redis answered in {took:.1f} ms (up {uptime:.0f} s)")


def _worker_hosts(services: Services) -> dict[str, Any]:
    """Scale-out mode: the worker hosts whose pool processes heartbeat now, by name."""
    alive = services.store.alive_workers()
    processes: dict[str, int] = {}
    for beat in services.store.workers():
        if beat.get("role") == "worker" and beat["id"] in alive:
            name = beat.get("worker_host") or beat["host"]
            processes[name] = processes.get(name, 0) + 1
    if not processes:
        return _check(False, "no Celery worker host is alive (start `python -m api worker`)")
    hosts = ", ".join(f"{name} ({count} process{'es' if count > 1 else ''})"
                      for name, count in sorted(processes.items()))
    return _check(True, f"{len(processes)} worker host(s) alive: {hosts}")


def _orchestration(services: Services) -> dict[str, Any]:
    loop = services.orchestrator
    if loop is None or not loop.alive or time.time() - loop.last_pass > SCHEDULER_SILENT_SECONDS:
        return _check(False, "this worker's orchestration loop (retries, pipelines, schedules) is not running")
    return _check(True, "orchestration loop alive")


def _capacity(services: Services) -> dict[str, Any]:
    store = services.store
    running, queued = store.live_running(), store.queued_count()
    detail = f"{running}/{store.max_running} running, {queued}/{store.max_queued} queued"
    return _check(queued < store.max_queued or store.max_queued == 0, detail)


def _stuck(services: Services) -> dict[str, Any]:
    settings = services.settings
    # The runner ends a task by timeout + grace; past that (and a few heartbeats) its worker is hung.
    limit = settings.task_timeout_seconds + settings.stop_grace_seconds + 5 * settings.heartbeat_interval_seconds
    tasks, _ = services.store.list_tasks(status=TaskStatus.RUNNING, step=None, limit=500, cursor=None)
    # A pipeline task runs as long as its nodes do; each node is a task checked here on its own.
    stuck = [t.task_id for t in tasks if t.started_at and t.pipeline is None
             and time.time() - parse_iso(t.started_at) > limit]
    if stuck:
        return _check(False, f"{len(stuck)} task(s) running past the timeout: {', '.join(stuck[:5])}")
    return _check(True, "no task is running past its timeout")


CHECKS = {
    "storage_writable": _storage_writable,
    "cache_readable": _cache_readable,
    "disk_free": _disk_free,
    "cleanup_scheduler": _scheduler,
    "task_runner": _runner,
    "orchestration": _orchestration,
    "capacity": _capacity,
    "stuck_tasks": _stuck,
}


def _warnings(services: Services) -> list[str]:
    """Problems that need a person but do not stop the service (health stays 200)."""
    try:
        bad = services.store.bad_files()
    except Exception:
        return []
    return [f"task file {b['file']} was skipped when the index was rebuilt: {b['reason']}" for b in bad]


SCALE_OUT_CHECKS = {"redis": _redis, "worker_hosts": _worker_hosts}


def health(services: Services) -> tuple[bool, dict[str, Any]]:
    checks = {}
    scale_out = SCALE_OUT_CHECKS if services.settings.backend == "celery" else {}
    for name, check in {**CHECKS, **scale_out}.items():
        try:
            checks[name] = check(services)
        except Exception as exc:
            checks[name] = _check(False, f"check failed: {type(exc).__name__}")
    failing = [name for name, result in checks.items() if not result["ok"]]
    return not failing, {"status": "failing" if failing else "ok", "failing": failing, "checks": checks,
                         "warnings": _warnings(services)}


def stats(services: Services) -> dict[str, Any]:
    # The Redis store answers the reads below from one pipelined round trip.
    store = services.store.stats_snapshot() if hasattr(services.store, "stats_snapshot") else services.store
    counters = store.counters()
    data = counters.data
    running, queued = store.live_running(), store.queued_count()
    alive = store.alive_workers()
    durations = {
        step: {"completed": hist["count"], "mean": round(hist["sum"] / hist["count"], 4) if hist["count"] else None,
               "p50": counters.duration_quantile(step, 0.5), "p95": counters.duration_quantile(step, 0.95)}
        for step, hist in data["durations"].items()
    }
    workers = [
        {"host": beat["host"], "pid": beat["pid"], "alive": beat["id"] in alive, "running": beat.get("running", 0),
         "tasks_started": data["started_by"].get(f"{beat['host']}:{beat['pid']}", 0),
         **({"role": beat["role"]} if "role" in beat else {})}  # scale-out: "api" or "worker"
        for beat in store.workers()
    ]
    by_status = counters.by_status()
    return {
        "tasks": {"by_status": by_status, "stored": sum(by_status.values())},
        "by_step": counters.by_step(),
        "submitted_total": data["submitted"],
        "ended_total": data["ended"],
        "capacity": {"running": running, "queued": queued, "max_concurrent_tasks": store.max_running,
                     "max_queued_tasks": store.max_queued, "free_slots": max(0, store.max_running - running)},
        "success_rate": counters.success_rate(),
        "duration_seconds": durations,
        "queue_wait_seconds": {"p50": counters.queue_wait_quantile(0.5), "p95": counters.queue_wait_quantile(0.95),
                               **_queue_waits(counters)},
        "tasks_per_hour": counters.per_hour(),
        "storage": {"cache_bytes": store.cache_size_bytes(),
                    "disk_free_bytes": shutil.disk_usage(store.paths.root).free},
        "workers": workers,
        "tasks_started_per_worker": data["started_by"],
        "last_cleanup": store.cleanup_state()["last"],
        "orchestration": {"retries_waiting": store.waiting_retries(), "dead_letters": store.dead_letter_count(),
                          "pipelines_running": len(store.running_pipelines())},
    }


def _queue_waits(counters: Any) -> dict[str, Any]:
    """Queue wait p50/p95 per step and per concurrency key (from acceptance, or a retry's queueing, to start)."""
    data = counters.data
    return {kind: {name: {"started": hist["count"], "p50": counters.queue_wait_quantile_of(kind, name, 0.5),
                          "p95": counters.queue_wait_quantile_of(kind, name, 0.95)}
                   for name, hist in data.get(f"queue_wait_by_{kind}", {}).items()}
            for kind in ("step", "key")}


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                     for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _histogram(lines: list[str], name: str, help_text: str, series: dict[tuple, dict[str, Any]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} histogram")
    for labels, hist in series.items():
        cumulative = 0
        for bound, n in zip([*DURATION_BUCKETS, "+Inf"], hist["buckets"]):
            cumulative += n
            lines.append(f"{name}_bucket{_labels(**dict(labels), le=str(bound))} {cumulative}")
        lines.append(f"{name}_sum{_labels(**dict(labels))} {hist['sum']}")
        lines.append(f"{name}_count{_labels(**dict(labels))} {hist['count']}")


def metrics(services: Services) -> str:
    """Prometheus text format, computed from the shared store so every worker reports the same."""
    store = services.store
    counters = store.counters()
    data = counters.data
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lines.append(f"{name}{_labels(**labels)} {value}")

    family("etl_tasks_submitted_total", "counter", "Tasks accepted, by step.",
           [({"step": step}, n) for step, n in sorted(data["submitted"].items())])
    family("etl_tasks_ended_total", "counter", "Tasks that ended, by step and final status.",
           [({"step": step, "status": status}, n) for step, states in sorted(data["ended"].items())
            for status, n in sorted(states.items())])
    family("etl_tasks", "gauge", "Tasks now stored, by status.",
           [({"status": status}, n) for status, n in counters.by_status().items()])
    _histogram(lines, "etl_step_duration_seconds", "Run time of completed steps.",
               {(("step", step),): hist for step, hist in sorted(data["durations"].items())})
    if data.get("queue_wait"):
        _histogram(lines, "etl_queue_wait_seconds", "Time from acceptance to start.", {(): data["queue_wait"]})
    cleanup = store.cleanup_state()
    totals = cleanup["totals"]
    family("etl_cleanup_runs_total", "counter", "Cleanup runs.", [({}, totals["runs"])])
    family("etl_cleanup_removed_total", "counter", "Tasks removed by cleanup.", [({}, totals["removed"])])
    family("etl_tasks_running", "gauge", "Tasks running on live workers.", [({}, store.live_running())])
    family("etl_tasks_queued", "gauge", "Tasks waiting for a slot.", [({}, store.queued_count())])
    family("etl_max_concurrent_tasks", "gauge", "The global running cap.", [({}, store.max_running)])
    family("etl_retries_waiting", "gauge", "Failed attempts waiting for their retry time (holding no slot).",
           [({}, store.waiting_retries())])
    family("etl_dead_letters", "gauge", "Tasks that failed after their last attempt, not retried or dismissed.",
           [({}, store.dead_letter_count())])
    family("etl_pipelines_running", "gauge", "Pipeline runs in progress.", [({}, len(store.running_pipelines()))])
    alive = store.alive_workers()
    family("etl_worker_heartbeat_timestamp_seconds", "gauge", "Last heartbeat of each worker.",
           [({"worker": f"{b['host']}:{b['pid']}", "alive": str(b["id"] in alive).lower()}, b.get("at", 0))
            for b in store.workers()])
    last = cleanup["last"]
    family("etl_cleanup_last_run_timestamp_seconds", "gauge", "When cleanup last ran.",
           [({}, parse_iso(last["at"]) if last else 0)])
    family("etl_cleanup_last_removed", "gauge", "Tasks removed by the last cleanup.",
           [({}, last["removed"] if last else 0)])
    return "\n".join(lines) + "\n"
