"""Service benchmarks against a real 4-worker Gunicorn: prints one JSON line per figure, then a table.

    .venv/bin/python -m tests.benchmarks.run [--only NAME ...] [--worker-class uvicorn|asgi] [--pairs 5]

Names: peer, roundtrip, client, burst, throughput, size, cleanup, stop, loss, footprint, memory, etl, events, ui, orchestration,
orchestration-celery, scaleout.
`peer` runs a real redis-server and a Celery worker beside the service and measures round trip,
burst and status rate on both in alternating pairs (tests/benchmarks/compare.py; `--pairs 2` for a
quick look); `footprint` is the idle server's sum of PSS, `memory` a worker's memory over many
large tasks (tests/benchmarks/footprint.py). `wrk` (Debian package) is used for the throughput
figures when installed; without it those figures are skipped and say so. `events` and `ui` are
the live-event and dashboard figures (tests/benchmarks/live_bench.py).
`orchestration`: pipeline node overhead and schedule firing lateness
(tests/benchmarks/orchestration_bench.py); `orchestration-celery`: the same in scale-out mode
(redis-server, one worker host, Gunicorn; not in the default set). `scaleout`: celery mode beside
local mode and plain Celery on one Redis, 1 vs 2 vs 3 worker hosts, WorkerLost detection
(tests/benchmarks/scaleout_bench.py; redis-server; not in the default set).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from api.store import TaskStore
from api.task import Task, TaskStatus, new_task_id, now_iso
from tests.benchmarks import compare, footprint
from tests.benchmarks.measure import Conn, burst, percentile, roundtrip_samples, status_rate
from tests.server import TERMINAL, Server

RESULTS: list[dict[str, Any]] = []


def report(figure: str, value: float | None, unit: str, target: str = "", note: str = "") -> None:
    row = {"figure": figure, "value": None if value is None else round(value, 3), "unit": unit,
           "target": target, "note": note}
    RESULTS.append(row)
    print(json.dumps(row, ensure_ascii=False), flush=True)


def bench_roundtrip(srv: Server, rounds: int = 300) -> None:
    samples = roundtrip_samples(srv.port, rounds)
    report("roundtrip_p50", percentile(samples, 0.5), "ms", "<= 3")
    report("roundtrip_p99", percentile(samples, 0.99), "ms", "<= 10")


def bench_client(srv: Server, rounds: int = 300) -> None:
    """Client.run(wait=True) of a no-op next to the raw HTTP round trip (with and without an
    Idempotency-Key, which the client always sends), interleaved on one server."""
    import uuid

    from api.client import Client

    conn = Conn(srv.port)
    samples: dict[str, list[float]] = {"client": [], "raw": [], "raw_idempotent": []}

    def raw(key: bool) -> None:
        headers = {"Idempotency-Key": uuid.uuid4().hex} if key else {}
        conn.conn.request("POST", "/run/diag_noop", headers=headers)
        response = conn.conn.getresponse()
        task = json.loads(response.read())
        assert response.status == 202, task
        while conn.request("GET", f"/status/{task['task_id']}?wait=10")[1]["status"] not in TERMINAL:
            pass

    with Client(srv.url) as client:
        for i in range(rounds + 20):
            for name in samples:
                started = time.perf_counter()
                if name == "client":
                    client.run("diag_noop", wait=True, timeout=30)
                else:
                    raw(name == "raw_idempotent")
                if i >= 20:  # warm-up excluded
                    samples[name].append((time.perf_counter() - started) * 1000)
    notes = {"client": f"Client.run(wait=True), {rounds} rounds interleaved with the raw loops",
             "raw": "POST /run + GET /status?wait=10 over http.client",
             "raw_idempotent": "the same with an Idempotency-Key header"}
    for name, values in samples.items():
        report(f"{name}_roundtrip_p50", percentile(values, 0.5), "ms", "", notes[name])
        report(f"{name}_roundtrip_p99", percentile(values, 0.99), "ms")


def bench_burst(srv: Server, total: int = 1000, clients: int = 16) -> None:
    result = burst(srv, total, clients)
    report("burst_tasks_per_second", result["tasks_per_second"], "tasks/s", ">= 600",
           f"{total} tasks, {clients} clients; submits alone {result['submits_per_second']:.0f}/s;"
           f" {result['errors']} errors; {result['cpu_ms_per_task']:.2f} ms CPU per task (all workers)")


def bench_throughput(srv: Server) -> None:
    rates = status_rate(srv)
    if rates is None:
        report("status_vs_livez", None, "ratio", ">= 0.8", "wrk is not installed (apt-get install wrk)")
        return
    report("livez_rps", rates["livez_rps"], "req/s", "", "wrk -t2 -c32 -d5s")
    report("status_rps", rates["status_rps"], "req/s", "", "wrk -t2 -c32 -d5s")
    report("status_vs_livez", rates["ratio"], "ratio", ">= 0.8")


def seed(storage: Path, count: int, *, expired: bool = False) -> list[str]:
    """Put ``count`` ended tasks straight into the store (JSON files + index), as a restore would."""
    store = TaskStore(storage, storage / "runs", storage / "outputs", ttl_seconds=3600 if not expired else -60,
                      max_running=25, max_queued=1000, worker_lost_after_seconds=3)
    store.open()
    tasks = []
    for _ in range(count):
        task = Task(task_id=new_task_id(), step_name="diag_noop", status=TaskStatus.QUEUED, created_at=now_iso(),
                    log_file=None)
        task.history.append({"status": "queued", "at": task.created_at, "reason": "seeded"})
        task.status = TaskStatus.RUNNING
        task.started_at = task.created_at
        task.transition(TaskStatus.COMPLETED, "seeded", store.ttl_seconds)
        task.result = {"seeded": True}
        with open(storage / f"{task.task_id}.json", "w", encoding="utf-8") as out:
            json.dump(task.file_view(), out, ensure_ascii=False, indent=2)
        tasks.append(task)
    store.import_tasks(tasks)
    store.close()
    return [t.task_id for t in tasks]


def _p99(conn: Conn, path: str, n: int = 1000, warm_up: int = 50) -> float:
    """p99 latency of ``path`` over ``n`` requests (1000: with fewer, p99 is a handful of outliers)."""
    samples = []
    for i in range(n + warm_up):
        started = time.perf_counter()
        code, _ = conn.request("GET", path)
        assert code == 200, (code, path)
        if i >= warm_up:
            samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.99)


def bench_size(make: Callable[..., Server]) -> None:
    results: dict[int, dict[str, float]] = {}
    stored = 0
    storage = Path(tempfile.mkdtemp(prefix="bench-size-")) / "task_storage"
    storage.mkdir(parents=True)
    srv = make(storage)
    try:
        for size in (100, 10_000, 100_000):
            ids = seed(storage, size - stored)
            stored = size
            if hasattr(os, "sync"):
                os.sync()  # measure the service, not the kernel writing back the files just seeded
            time.sleep(2)
            conn = Conn(srv.port)
            results[size] = {
                "status": _p99(conn, f"/status/{ids[-1]}"),
                "tasks": _p99(conn, "/tasks?limit=50"),
                "stats": _p99(conn, "/stats"),
            }
            for name, value in results[size].items():
                report(f"p99_{name}_at_{size}", value, "ms")
        for name in ("status", "tasks", "stats"):
            report(f"{name}_p99_growth_100_to_100k", results[100_000][name] / results[100][name], "ratio", "<= 1.2")
    finally:
        srv.stop()


def bench_cleanup(make: Callable[..., Server], count: int = 100_000) -> None:
    storage = Path(tempfile.mkdtemp(prefix="bench-cleanup-")) / "task_storage"
    storage.mkdir(parents=True)
    srv = make(storage)
    try:
        live = Conn(srv.port).request("POST", "/run/diag_noop")[1]["task_id"]
        srv.wait_for(live)
        idle = _p99(Conn(srv.port), f"/status/{live}")
        seed(storage, count, expired=True)
        if hasattr(os, "sync"):
            os.sync()  # as for the size figures: the service's work, not the kernel writing back the seed
        time.sleep(2)
        during: list[float] = []
        done = threading.Event()

        def poll() -> None:
            conn = Conn(srv.port)
            while not done.is_set():
                started = time.perf_counter()
                conn.request("GET", f"/status/{live}")
                during.append((time.perf_counter() - started) * 1000)

        poller = threading.Thread(target=poll)
        poller.start()
        started = time.perf_counter()
        conn = Conn(srv.port)
        conn.conn.timeout = 300  # the figure is the duration, whatever it is
        code, body = conn.request("POST", "/cleanup/now")
        took = time.perf_counter() - started
        done.set()
        poller.join()
        assert code == 200, body
        report("cleanup_100k_seconds", took, "s", "<= 30", f"removed {body['removed']}")
        report("status_p99_idle", idle, "ms")
        report("status_p99_during_cleanup", percentile(during, 0.99), "ms", f"<= {2 * idle:.2f} (2x idle)")
    finally:
        srv.stop()


def bench_stop(srv: Server, rounds: int = 10) -> None:
    clients = srv.clients_by_worker(2)
    (owner_pid, owner), (_, other) = list(clients.items())[:2]
    latencies = []
    for _ in range(rounds):
        task = srv.run("diag_sleep", client=owner, seconds=60)
        srv.wait_for(task["task_id"], {"running"})
        started = time.perf_counter()
        assert other.post(f"/stop/{task['task_id']}").status_code == 202
        while srv.status(task["task_id"])["status"] != "stopped":
            time.sleep(0.005)
        latencies.append(time.perf_counter() - started)
    report("stop_latency_cross_worker_p50", statistics.median(latencies), "s", "<= 0.5",
           f"max {max(latencies):.3f} s over {rounds}")


def bench_loss(make: Callable[..., Server]) -> None:
    for kind in ("gunicorn", "uvicorn"):
        storage = Path(tempfile.mkdtemp(prefix=f"bench-loss-{kind}-")) / "task_storage"
        srv = make(storage, kind=kind, workers=2)
        try:
            times = []
            for _ in range(3):
                task = srv.run("diag_sleep", seconds=60)
                pid = srv.status(task["task_id"])["worker"]["pid"]
                killed = time.perf_counter()
                os.kill(pid, signal.SIGKILL)
                srv.wait_for(task["task_id"], timeout=20)
                times.append(time.perf_counter() - killed)
                srv.wait_workers()
            how = "child_exit hook" if kind == "gunicorn" else "heartbeats only"
            report(f"worker_loss_detection_{kind}", max(times), "s", "<= 5", f"worst of 3 ({how})")
        finally:
            srv.stop()


def bench_peer(args: argparse.Namespace, scratch: Path) -> None:
    args.peer = "celery"
    args.ours_set = [] if args.worker_class == "uvicorn" else [f"worker_class={args.worker_class}"]
    for row in compare.run(args, scratch):
        ours, peer, ratio = row["ours"], row["peer"], row["ratio"]
        report(f"vs_celery_{row['figure']}", ratio["median"], "ours/peer", row["target"],
               f"ours {ours['median']:.2f} ({ours['min']:.2f}-{ours['max']:.2f}) {row['unit']}, celery "
               f"{peer['median']:.2f} ({peer['min']:.2f}-{peer['max']:.2f}); ratio {ratio['min']:.2f}-"
               f"{ratio['max']:.2f} over {row['pairs']} pairs")


def bench_footprint(worker_class: str) -> None:
    memory = footprint.idle(Path(tempfile.gettempdir()), worker_class=worker_class)
    report("idle_sum_pss_mb", memory["sum_pss_mb"], "MB", "<= 200",
           f"alone (anonymous PSS + the libraries once) {memory['alone_mb']:.0f} MB; 4 workers: master {memory['master_pss_mb']:.0f} MB, workers {memory['worker_pss_mb']} MB PSS"
           f" (RSS {memory['worker_rss_mb']} MB)")


def bench_memory(args: argparse.Namespace) -> None:
    result = footprint.after_large_tasks(Path(tempfile.gettempdir()), args.memory_rows, args.memory_runs,
                                         worker_class=args.worker_class)
    report("worker_pss_over_idle_after_tasks_mb", result["over_idle_mb"], "MB", "<= 50",
           f"{result['runs']} completeness chains of {result['rows']:,} x {result['rows']:,} rows on one worker "
           f"({result['task_seconds_median']:.1f} s each): idle {result['idle_mb']:.0f} MB, after the first "
           f"{result['after_first_mb']:.0f}, after the last {result['after_last_mb']:.0f}, max "
           f"{result['after_max_mb']:.0f} MB PSS")
    report("worker_pss_growth_first_to_last_task_mb", result["growth_first_to_last_mb"], "MB", "~0 (no growth)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--worker-class", default="uvicorn", choices=["uvicorn", "asgi"])
    parser.add_argument("--memory-rows", type=int, default=200_000, help="rows per side of the memory figure's task")
    parser.add_argument("--memory-runs", type=int, default=20, help="tasks of the memory figure")
    parser.add_argument("--sleep-tasks-per-host", type=int, default=200,
                        help="scaleout: 0.05 s tasks per worker host in the 1/2/3-host figure")
    compare.add_arguments(parser)
    args = parser.parse_args()
    wanted = set(args.only) if args.only else {"peer", "roundtrip", "client", "burst", "throughput", "size", "cleanup",
                                               "stop", "loss", "footprint", "memory", "etl",
                                               "events", "ui",
                                               "orchestration"}
    started = time.time()
    servers: list[Server] = []
    # Every figure's storage folders go under one scratch folder, removed at the end (the size and
    # cleanup figures write 100k task files each).
    scratch = Path(tempfile.mkdtemp(prefix="etl-bench-"))
    tempfile.tempdir = str(scratch)

    def make(storage: Path, **settings: Any) -> Server:
        settings.setdefault("worker_class", args.worker_class)
        srv = Server(storage, **settings)
        servers.append(srv)
        return srv.start()

    try:
        if "peer" in wanted:
            bench_peer(args, scratch)
        if wanted & {"roundtrip", "client", "burst", "throughput", "stop"}:
            main_srv = make(Path(tempfile.mkdtemp(prefix="bench-")) / "task_storage")
            for name, bench in (("roundtrip", bench_roundtrip), ("client", bench_client), ("burst", bench_burst),
                                ("throughput", bench_throughput), ("stop", bench_stop)):
                if name in wanted:
                    bench(main_srv)
            main_srv.stop()
        if "size" in wanted:
            bench_size(make)
        if "cleanup" in wanted:
            bench_cleanup(make)
        if "loss" in wanted:
            bench_loss(make)
        if "footprint" in wanted:
            bench_footprint(args.worker_class)
        if "memory" in wanted:
            bench_memory(args)
        if "etl" in wanted:
            from tests.benchmarks import etl_bench

            for row in etl_bench.run():
                report(**row)
        if wanted & {"events", "ui"}:
            from tests.benchmarks import live_bench

            for row in live_bench.run(make, wanted):
                report(**row)
        if "orchestration" in wanted:
            from tests.benchmarks import orchestration_bench

            for row in orchestration_bench.run(make):
                report(**row)
        if "orchestration-celery" in wanted:
            from tests.benchmarks import orchestration_bench
            from tests.scaleout import CeleryServer

            def make_celery(storage: Path, **settings: Any) -> Server:
                settings.setdefault("worker_class", args.worker_class)
                srv = CeleryServer(storage, **settings)
                servers.append(srv)
                return srv.start()

            for row in orchestration_bench.run(make_celery):
                report(**{**row, "figure": f"celery: {row['figure']}"})
        if "scaleout" in wanted:
            from tests.benchmarks import scaleout_bench

            for row in scaleout_bench.run(args, scratch):
                report(**row)
    finally:
        for srv in servers:
            srv.stop()
        tempfile.tempdir = None
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(f"{'figure':44} {'value':>12} {'unit':8} target")
    for row in RESULTS:
        value = "n/a" if row["value"] is None else f"{row['value']:.3f}"
        print(f"{row['figure']:44} {value:>12} {row['unit']:8} {row['target']}  {row['note']}")
    print(f"\n{len(RESULTS)} figures in {time.time() - started:.0f} s on {os.cpu_count()} cores, "
          f"worker class {args.worker_class}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
