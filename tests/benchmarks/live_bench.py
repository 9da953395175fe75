"""Live-event and dashboard figures: cross-worker event latency, the CPU cost of idle streams,
and the dashboard's load time in headless Chromium. Called by tests/benchmarks/run.py (``events``, ``ui``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from tests.server import Server


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def event_latency(srv: Server, tasks: int = 300) -> list[dict[str, Any]]:
    """A change committed by one worker -> the event read by a client of another worker.

    Measured as the client's clock when the event arrives minus the event's own commit stamp
    (`at`, the same machine's clock), over the submit and end events of `tasks` no-op tasks.
    """
    clients = srv.clients_by_worker(wanted=2)
    (_, runner), (_, watcher) = list(clients.items())[:2]
    latencies: list[float] = []
    seen = threading.Event()
    want = 2 * tasks  # each no-op task: started at once, then completed (this server runs no other diag_noop)

    def watch() -> None:
        with watcher.stream("GET", "/events", params={"step": "diag_noop"}, timeout=60) as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    arrived = time.time()
                    data = json.loads(line[6:])
                    if "task_id" in data:
                        latencies.append(arrived - data["at"])
                        if len(latencies) >= want:
                            break
                elif line == "event: ready":
                    seen.set()
        seen.set()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    seen.wait(10)
    for _ in range(tasks):
        srv.run("diag_noop", client=runner)
        time.sleep(0.01)
    thread.join(30)
    ms = [1000 * x for x in latencies]
    note = f"{len(ms)} events of {tasks} tasks; written by one worker, read on another"
    return [
        {"figure": "event_latency_cross_worker_p50", "value": _percentile(ms, 0.5), "unit": "ms", "note": note},
        {"figure": "event_latency_cross_worker_p99", "value": _percentile(ms, 0.99), "unit": "ms", "note": note},
    ]


def _cpu_seconds(srv: Server) -> float:
    assert srv.proc is not None
    root = psutil.Process(srv.proc.pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        times = proc.cpu_times()
        total += times.user + times.system
    return total


def idle_streams_cpu(srv: Server, streams: int = 200, seconds: float = 10.0) -> list[dict[str, Any]]:
    """Server CPU (all workers) while `streams` SSE clients wait on an idle service, minus idle alone."""

    def measure() -> float:
        before = _cpu_seconds(srv)
        time.sleep(seconds)
        return 100 * (_cpu_seconds(srv) - before) / seconds

    baseline = measure()

    async def hold() -> tuple[float, int]:
        limits = httpx.Limits(max_connections=streams + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
            opened = [await client.send(client.build_request("GET", "/events"), stream=True) for _ in range(streams)]
            await asyncio.sleep(1.0)
            busy = await asyncio.to_thread(measure)
            rss = sum(p.memory_info().rss for p in psutil.Process(srv.proc.pid).children(recursive=True))
            for response in opened:
                await response.aclose()
            return busy, rss

    busy, rss = asyncio.run(hold())
    return [
        {"figure": "idle_sse_streams_cpu", "value": busy - baseline, "unit": "% core",
         "note": f"{streams} open streams on {srv.workers} workers for {seconds:g} s (idle server alone "
                 f"{baseline:.2f} %); workers' RSS {rss / 1024 / 1024:.0f} MB"},
    ]


def page_load(srv: Server, loads: int = 7) -> list[dict[str, Any]]:
    """/ui#/overview in headless Chromium until its numbers are shown (no keys: no login step)."""
    from etl import browser as etl_browser

    config = etl_browser.browser_config()
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = Options()
    options.binary_location = config["chromium"]
    for arg in ("--headless=new", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--window-size=1280,800", f"--user-data-dir={tempfile.mkdtemp(prefix='bench-chromium-')}"):
        options.add_argument(arg)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options.add_argument("--no-sandbox")
    driver = webdriver.Chrome(service=Service(executable_path=config["driver"]), options=options)
    took: list[float] = []
    try:
        for n in range(loads + 1):
            driver.get("about:blank")
            started = time.perf_counter()
            driver.get(f"{srv.url}/ui#/overview")
            WebDriverWait(driver, 30, poll_frequency=0.01).until(lambda d: d.find_elements(By.ID, "ov-running"))
            if n:  # the first load warms Chromium's own caches
                took.append(1000 * (time.perf_counter() - started))
    finally:
        driver.quit()
    return [{"figure": "dashboard_overview_load", "value": statistics.median(took), "unit": "ms",
             "note": f"median of {loads} loads until the overview shows its numbers (max {max(took):.0f} ms)"}]


def run(make: Callable[..., Server], wanted: set[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    srv = make(Path(tempfile.mkdtemp(prefix="bench-live-")) / "task_storage")
    try:
        if "events" in wanted:
            rows += event_latency(srv)
            rows += idle_streams_cpu(srv)
        if "ui" in wanted:
            rows += page_load(srv)
    finally:
        srv.stop()
    return rows
