"""The service's side of the figures: a light HTTP client, the round trip, the burst and the status rate."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import threading
import time
from typing import Any

from tests.benchmarks.peer import cpu_seconds
from tests.server import Server


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Conn:
    """A persistent HTTP/1.1 connection with the least client overhead (stdlib http.client)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"content-type": "application/json"} if payload else {}
        for attempt in range(2):
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                response = self.conn.getresponse()
                data = response.read()
                return response.status, json.loads(data) if data else None
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt:
                    raise
        raise AssertionError("unreachable")


def roundtrip_samples(port: int, rounds: int = 300, warm_up: int = 20) -> list[float]:
    """Milliseconds from POST /run/diag_noop to its ended status (long-polled), one task at a time."""
    conn = Conn(port)
    samples = []
    for i in range(rounds + warm_up):
        started = time.perf_counter()
        code, task = conn.request("POST", "/run/diag_noop")
        assert code == 202, task
        while True:
            code, state = conn.request("GET", f"/status/{task['task_id']}?wait=10")
            if state["status"] in ("completed", "failed", "stopped"):
                break
        if i >= warm_up:
            samples.append((time.perf_counter() - started) * 1000)
    return samples


def _completed(conn: Conn) -> int:
    return conn.request("GET", "/stats")[1]["tasks"]["by_status"]["completed"]


def burst(srv: Server, total: int = 1000, clients: int = 16) -> dict[str, Any]:
    """``total`` no-op tasks submitted by ``clients`` threads; tasks/s until the last one completed."""
    probe = Conn(srv.port)
    before = _completed(probe)
    errors: list[str] = []

    def client(count: int) -> None:
        conn = Conn(srv.port)
        for _ in range(count):
            code, body = conn.request("POST", "/run/diag_noop")
            if code != 202:
                errors.append(f"{code} {body}")

    counts = [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
    threads = [threading.Thread(target=client, args=(n,)) for n in counts]
    cpu_before = cpu_seconds([srv.proc.pid])
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    submitted = time.perf_counter() - started
    while _completed(probe) - before < total:
        time.sleep(0.005)
    took = time.perf_counter() - started
    return {"tasks_per_second": total / took, "submits_per_second": total / submitted, "errors": len(errors),
            "cpu_ms_per_task": 1000 * (cpu_seconds([srv.proc.pid]) - cpu_before) / total}


def _wrk(url: str, seconds: int = 5) -> float | None:
    if not shutil.which("wrk"):
        return None
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{seconds}s", url], capture_output=True, text=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


def status_rate(srv: Server, seconds: int = 5) -> dict[str, float] | None:
    """wrk req/s of /livez and of an ended task's /status; None without wrk."""
    conn = Conn(srv.port)
    task = conn.request("POST", "/run/diag_noop")[1]
    srv.wait_for(task["task_id"])
    livez = _wrk(f"{srv.url}/livez", seconds)
    status = _wrk(f"{srv.url}/status/{task['task_id']}", seconds)
    if livez is None or status is None:
        return None
    return {"livez_rps": livez, "status_rps": status, "ratio": status / livez}
