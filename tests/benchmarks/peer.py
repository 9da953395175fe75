"""The Celery + Redis peer: a real redis-server and a Celery worker (prefork, 2 processes) on 127.0.0.1.

Installs Celery and redis-py from tests/benchmarks/requirements.txt when they are missing; needs the
Debian package redis-server. Everything started here is stopped by ``Peer.stop``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from tests.server import ROOT, free_port

REQUIREMENTS = Path(__file__).with_name("requirements.txt")


def ensure_installed() -> None:
    """Install the benchmark-only packages into this virtualenv unless they are already there."""
    if all(importlib.util.find_spec(name) for name in ("celery", "redis")):
        return
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
    importlib.invalidate_caches()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes and their children (so far)."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for p in [process, *process.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def run_clients(total: int, clients: int, work) -> float:
    """``work(count)`` in ``clients`` threads that share ``total`` between them; returns the
    perf_counter at which they started (they have all ended when this returns)."""
    threads = [threading.Thread(target=work, args=(total // clients + (1 if i < total % clients else 0),))
               for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return started


class Peer:
    """redis-server (no persistence) + ``celery worker --pool prefork -c 2 -O fair --prefetch-multiplier 1``."""

    def __init__(self) -> None:
        ensure_installed()
        if not shutil.which("redis-server"):
            raise RuntimeError("redis-server is not installed (Debian package redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.folder = Path(tempfile.mkdtemp(prefix="bench-peer-"))
        self.redis_proc: subprocess.Popen | None = None
        self.worker_proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> Peer:
        self.redis_proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        os.environ["BENCH_REDIS_URL"] = self.url  # read by celery_app, here and in the worker
        import redis

        self.redis = redis.Redis.from_url(f"{self.url}/2")
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.redis.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        env = {**os.environ, "BENCH_REDIS_URL": self.url}
        self.log = open(self.folder / "celery.log", "ab")
        # A single worker: gossip, mingle and heartbeats are cluster chatter it does not need.
        self.worker_proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.benchmarks.celery_app", "worker", "--pool", "prefork",
             "--concurrency", "2", "-O", "fair", "--prefetch-multiplier", "1", "--loglevel", "WARNING",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        from tests.benchmarks import celery_app

        self.app = celery_app.app
        self.noop_result = celery_app.noop_result
        self.noop_counted = celery_app.noop_counted
        self.counter_key = celery_app.COUNTER_KEY
        while True:
            if self.worker_proc.poll() is not None:
                raise RuntimeError(f"the Celery worker exited: {(self.folder / 'celery.log').read_text()[-2000:]}")
            try:
                self.noop_result.delay().get(timeout=2)
                return self
            except Exception:
                if time.monotonic() > deadline:
                    raise
        return self

    def pids(self) -> list[int]:
        """The Celery worker (with its pool processes) and redis-server: everything that works for a task."""
        return [p.pid for p in (self.worker_proc, self.redis_proc) if p is not None]

    def stop(self) -> None:
        for proc in (self.worker_proc, self.redis_proc):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        if self.worker_proc is not None:
            self.log.close()
        self.worker_proc = self.redis_proc = None
        shutil.rmtree(self.folder, ignore_errors=True)

    # --- the figures, each the Celery counterpart of the service's -------------------------

    def roundtrip(self, rounds: int, warm_up: int = 20) -> list[float]:
        """Milliseconds from ``delay()`` to the result, one task at a time (its in-process client, no HTTP)."""
        samples = []
        for i in range(rounds + warm_up):
            started = time.perf_counter()
            self.noop_result.delay().get(timeout=30)
            if i >= warm_up:
                samples.append((time.perf_counter() - started) * 1000)
        return samples

    def burst(self, total: int, clients: int) -> dict[str, Any]:
        """``total`` no-op tasks sent from ``clients`` threads; tasks/s until the last one ran."""
        before = int(self.redis.get(self.counter_key) or 0)
        cpu_before = cpu_seconds(self.pids())
        started = run_clients(total, clients, lambda n: [self.noop_counted.delay() for _ in range(n)])
        submitted = time.perf_counter() - started
        while int(self.redis.get(self.counter_key) or 0) - before < total:
            time.sleep(0.005)
        took = time.perf_counter() - started
        return {"tasks_per_second": total / took, "submits_per_second": total / submitted,
                "cpu_ms_per_task": 1000 * (cpu_seconds(self.pids()) - cpu_before) / total}

    def status_rate(self, seconds: float, threads: int = 16) -> dict[str, float]:
        """State lookups/s of an ended task vs Redis PINGs/s (the cheapest call), ``threads`` client threads."""
        task_id = self.noop_result.delay()
        task_id.get(timeout=30)

        def rate(call) -> float:
            done = [0] * threads
            stop = time.perf_counter() + seconds

            def loop(slot: int) -> None:
                while time.perf_counter() < stop:
                    call()
                    done[slot] += 1

            workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            return sum(done) / seconds

        backend = self.app.backend
        # cache=False: a client asks Redis, as a fresh process would (the backend caches ended results)
        state = rate(lambda: backend.get_task_meta(task_id.id, cache=False)["status"])
        ping = rate(backend.client.ping)
        return {"status_rps": state, "livez_rps": ping, "ratio": state / ping}
