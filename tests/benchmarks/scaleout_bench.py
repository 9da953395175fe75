"""Scale-out figures (``ETL_BACKEND=celery``): every process on 127.0.0.1, stopped at the end.

    .venv/bin/python -m tests.benchmarks.run --only scaleout [--pairs 5]

1. No-op round trip and burst, in alternating triples: the service in local mode, the service in
   celery mode (a 4-worker Gunicorn API + one worker host of 4 pool processes) and plain Celery
   (tests/benchmarks/peer.py: prefork 2), the last two on one redis-server (the service in its
   own database).
2. Throughput of ``diag_sleep`` 0.05 s tasks with 1, 2 and 3 worker hosts of 4 pool processes
   each (the cap, 100, never binds), the order flipping from round to round; then the same with
   0.5 s tasks, which need a tenth of the CPU per second of sleep (the hosts share 2 cores here).
3. WorkerLost detection: a worker host's whole tree killed (SIGKILL) while it runs a long task,
   until ``/status`` says failed/WorkerLost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from api.settings import Settings
from tests.benchmarks import compare
from tests.benchmarks import measure as bench
from tests.scaleout import RedisServer, WorkerHost
from tests.server import Server

CONCURRENCY = 4  # pool processes per worker host
SLEEP_SECONDS = 0.05
HOST_COUNTS = (1, 2, 3)


def _row(figure: str, value: float | None, unit: str, target: str = "", note: str = "") -> dict[str, Any]:
    return {"figure": figure, "value": value, "unit": unit, "target": target, "note": note}


def _cell(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def wait_pool(srv: Server, host: WorkerHost, timeout: float = 60) -> None:
    """Until every pool process of ``host`` heartbeats to the API (a killed host's old beats do not count)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.proc is None or host.proc.poll() is not None:
            raise RuntimeError(f"worker host {host.name} exited:\n{host.log_text()[-2000:]}")
        try:
            pids = set(host.pool_pids())
            workers = srv.client.get("/stats").json()["workers"]
        except (httpx.HTTPError, psutil.NoSuchProcess, ValueError):  # still forking, or the API busy: ask again
            time.sleep(0.2)
            continue
        if len([w for w in workers if w.get("role") == "worker" and w["alive"] and w["pid"] in pids]) >= host.concurrency:
            return
        time.sleep(0.2)
    raise RuntimeError(f"worker host {host.name} not ready in {timeout} s:\n{host.log_text()[-2000:]}")


class ScaleoutSide:
    """The service in celery mode on a given Redis: a 4-worker Gunicorn API and one worker host."""

    label = f"service, celery mode (4 API workers + 1 worker host x {CONCURRENCY})"

    def __init__(self, folder: Path, redis_url: str, redis_pid: int) -> None:
        self.host = WorkerHost(folder / "host", redis_url, CONCURRENCY, "bench-host")
        self.srv = Server(folder / "api", backend="celery", redis_url=redis_url)
        self.redis_pid = redis_pid

    def start(self) -> None:
        self.host.start()
        self.srv.start()
        wait_pool(self.srv, self.host)

    def stop(self) -> None:
        self.srv.stop()
        self.host.stop()

    def roundtrip(self, rounds: int) -> list[float]:
        return bench.roundtrip_samples(self.srv.port, rounds)

    def pids(self) -> list[int]:
        """The API, the worker host and Redis: everything that works for a task."""
        return [self.srv.proc.pid, self.host.proc.pid, self.redis_pid]

    def burst(self, total: int, clients: int) -> dict[str, Any]:
        return timed_burst(self.srv, self.pids(), total, clients=clients)

    def status_rate(self, seconds: int) -> None:
        return None


class LocalSide(compare.ServiceSide):
    """The service in local mode (4 Gunicorn workers), its burst timed as the celery mode's."""

    label = "service, local mode (4 workers)"

    def burst(self, total: int, clients: int) -> dict[str, Any]:
        return timed_burst(self.srv, [self.srv.proc.pid], total, clients=clients)


def side_by_side(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    """Round trip and burst on local mode, celery mode and plain Celery, ``args.pairs`` rotating triples."""
    local = LocalSide(scratch, {})
    peer = compare.CelerySide()
    started: list[Any] = []
    names = ("local", "celery_mode", "plain_celery")
    values: dict[str, dict[str, list[float]]] = {}
    try:
        for side in (local, peer):
            started.append(side)  # stopped even when its start fails half-way
            side.start()
        # The service's state and queue in database 5 of the peer's redis-server (Celery uses 0-2).
        ours = ScaleoutSide(Path(scratch) / "scaleout-side", f"{peer.peer.url}/5", peer.peer.redis_proc.pid)
        started.append(ours)
        ours.start()
        sides = dict(zip(names, (local, ours, peer), strict=True))
        for triple in range(args.pairs):
            order = list(names[triple % 3:] + names[:triple % 3])  # each side first in turn
            for figure in ("roundtrip", "burst"):
                for name in order:
                    for key, value in compare.measure(sides[name], figure, args).items():
                        values.setdefault(key, {n: [] for n in names})[name].append(value)
            print(f'{{"scaleout_triple": {triple + 1}, "of": {args.pairs}}}', flush=True)
    finally:
        for side in reversed(started):
            side.stop()
    rows = []
    units = {"roundtrip_p50_ms": "ms", "roundtrip_p99_ms": "ms", "burst_tasks_per_second": "tasks/s",
             "burst_cpu_ms_per_task": "ms"}
    for key, by_side in values.items():
        for name in names:
            rows.append(_row(f"scaleout_{name}_{key}", statistics.median(by_side[name]), units[key], "",
                             f"median (range) {_cell(by_side[name])} over {args.pairs} triples"))
        for other in ("local", "plain_celery"):
            ratios = [a / b for a, b in zip(by_side["celery_mode"], by_side[other], strict=True)]
            rows.append(_row(f"scaleout_{key}_celery_mode_vs_{other}", statistics.median(ratios), "ratio", "",
                             f"per-triple ratio {_cell(ratios)}"))
    return rows


class Cluster:
    """A private redis-server, a celery-mode API (cap 100) and up to three worker hosts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.redis = RedisServer(folder / "redis")
        self.api = Server(folder / "api", backend="celery", redis_url=self.redis.url,
                          max_concurrent_tasks=100, max_queued_tasks=5000)
        self.hosts: list[WorkerHost] = []
        self.made = 0

    def start(self) -> Cluster:
        self.redis.start()
        self.api.start()
        return self

    def add_host(self) -> WorkerHost:
        self.made += 1
        host = WorkerHost(self.folder / f"host{self.made}", self.redis.url, CONCURRENCY, f"bench-host{self.made}")
        self.hosts.append(host.start())
        wait_pool(self.api, host)
        return host

    def resize(self, count: int) -> None:
        while len(self.hosts) > count:
            self.hosts.pop().stop()
        while len(self.hosts) < count:
            self.add_host()

    def pids(self) -> list[int]:
        procs = [self.api.proc, self.redis.proc, *(h.proc for h in self.hosts)]
        return [p.pid for p in procs if p is not None]

    def stop(self) -> None:
        self.api.stop()
        for host in self.hosts:
            host.stop()
        self.redis.stop()


def timed_burst(srv: Server, pids: list[int], total: int, step: str = "diag_noop",
                parameters: dict[str, Any] | None = None, clients: int = 16, timeout: float = 300) -> dict[str, float]:
    """``total`` tasks submitted by ``clients`` threads; tasks/s until the last one completed, and the
    CPU of ``pids`` (with their children) over that time.

    The method of measure.burst, but the completion probe (``/stats``) runs every 50 ms instead of
    every 5: in celery mode one ``/stats`` costs ~2.5 ms of CPU, so a 5 ms probe alone took about a
    third of a core and a third of the CPU per task on this 2-core machine.
    """
    result = bench.burst(srv, total, clients, step=step, parameters=parameters, pids=pids, probe_seconds=0.05,
                         timeout=timeout)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} submits refused, first: {result['first_error']}")
    return result


def host_scaling(cluster: Cluster, rounds: int, seconds: float, per_host: int) -> list[dict[str, Any]]:
    """tasks/s of ``seconds``-long diag_sleep tasks with 1, 2, 3 hosts; ascending in even rounds,
    descending in odd ones (one host started or stopped between configurations). ``per_host`` is
    rounded down to whole waves of the host's slots, so the ideal rate is count x slots / seconds."""
    per_host = max(CONCURRENCY, per_host // CONCURRENCY * CONCURRENCY)
    rates: dict[int, list[float]] = {n: [] for n in HOST_COUNTS}
    cores: dict[int, list[float]] = {n: [] for n in HOST_COUNTS}
    speedup: dict[int, list[float]] = {n: [] for n in HOST_COUNTS}
    for round_ in range(rounds):
        got = {}
        for count in HOST_COUNTS if round_ % 2 == 0 else reversed(HOST_COUNTS):
            cluster.resize(count)
            result = timed_burst(cluster.api, cluster.pids(), per_host * count, "diag_sleep", {"seconds": seconds})
            got[count] = result["tasks_per_second"]
            rates[count].append(result["tasks_per_second"])
            cores[count].append(result["cores_busy"])
        for count in HOST_COUNTS:
            speedup[count].append(got[count] / got[1])
        print(f'{{"scaleout_hosts_round": {round_ + 1}, "of": {rounds}, "sleep_seconds": {seconds}}}', flush=True)
    rows = []
    ms = f"{seconds * 1000:.0f}ms"
    for count in HOST_COUNTS:
        ideal = count * CONCURRENCY / seconds
        rows.append(_row(f"scaleout_sleep_{ms}_tasks_per_second_{count}_host{'s' if count > 1 else ''}",
                         statistics.median(rates[count]), "tasks/s", f"ideal {ideal:.0f}",
                         f"{per_host * count} x diag_sleep {seconds:g} s, {count} host(s) x {CONCURRENCY}; "
                         f"median (range) {_cell(rates[count], 1)} over {rounds} rounds; CPU busy "
                         f"{_cell(cores[count])} cores of 2"))
        if count > 1:
            rows.append(_row(f"scaleout_sleep_{ms}_speedup_{count}_hosts_vs_1", statistics.median(speedup[count]),
                             "x", f"~{count} (near-linear)", f"per-round ratio {_cell(speedup[count])}"))
    return rows


def worker_lost(cluster: Cluster, trials: int) -> list[dict[str, Any]]:
    """kill -9 of the worker host's tree while its step runs; seconds until /status says WorkerLost."""
    cluster.resize(1)
    took = []
    for _ in range(trials):
        host = cluster.hosts[0]
        task = cluster.api.run("diag_sleep", seconds=60)
        deadline = time.monotonic() + 30
        while not (state := cluster.api.status(task["task_id"]))["worker"]:  # claimed by a pool process
            if time.monotonic() > deadline:
                raise RuntimeError(f"task {task['task_id']} not claimed in 30 s: {state}")
            time.sleep(0.02)
        time.sleep(0.3)  # a few lease renewals in: the verdict is measured from a lease just renewed or so
        killed = time.perf_counter()
        host.kill_tree()
        while (state := cluster.api.status(task["task_id"]))["status"] == "running":
            if time.perf_counter() - killed > 30:
                raise RuntimeError(f"task {task['task_id']} still running 30 s after its host was killed")
            time.sleep(0.02)
        took.append(time.perf_counter() - killed)
        if state["status"] != "failed" or (state.get("error") or {}).get("type") != "WorkerLost":
            raise RuntimeError(f"expected failed/WorkerLost, got {state['status']}: {state.get('error')}")
        host.stop()  # closes its log; the tree is already gone
        cluster.hosts.remove(host)
        cluster.add_host()
    lease = float(cluster.api.env.get("ETL_LEASE_SECONDS", Settings.model_fields["lease_seconds"].default))
    return [_row("scaleout_worker_lost_detection_seconds", statistics.median(took), "s", "<= 5",
                 f"kill -9 of a worker host's tree mid-step until /status says WorkerLost; median (range) "
                 f"{_cell(took)} over {trials} trials; lease {lease:g} s (ETL_LEASE_SECONDS), reaper every 0.5 s")]


def run(args: argparse.Namespace, scratch: Path) -> list[dict[str, Any]]:
    rows = side_by_side(args, scratch)
    cluster = Cluster(Path(scratch) / "scaleout-cluster")
    try:
        cluster.start()
        rows += host_scaling(cluster, args.pairs, SLEEP_SECONDS, args.sleep_tasks_per_host)
        # The same with 10x longer sleeps: a tenth of the CPU per second of sleep, so the hosts'
        # scaling shows where 2 shared cores bind the 50 ms figure.
        rows += host_scaling(cluster, args.pairs, 10 * SLEEP_SECONDS, max(8, args.sleep_tasks_per_host // 8))
        rows += worker_lost(cluster, args.pairs)
    finally:
        cluster.stop()
    return rows
