"""The service's side of the figures: a light HTTP client, the round trip, the burst and the status rate."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import time
from typing import Any

from tests.benchmarks.peer import cpu_seconds, run_clients
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


def burst(srv: Server, total: int = 1000, clients: int = 16, *, step: str = "diag_noop",
          parameters: dict[str, Any] | None = None, pids: list[int] | None = None, probe_seconds: float = 0.005,
          timeout: float = 600) -> dict[str, Any]:
    """``total`` tasks of ``step`` submitted by ``clients`` threads; tasks/s until the last one
    completed (``/stats`` probed every ``probe_seconds``), and the CPU of ``pids`` (the server's
    by default, with their children) over that time."""
    pids = pids or [srv.proc.pid]
    probe = Conn(srv.port)
    before = _completed(probe)
    errors: list[str] = []
    body = {"parameters": parameters} if parameters else None

    def client(count: int) -> None:
        conn = Conn(srv.port)
        for _ in range(count):
            code, answer = conn.request("POST", f"/run/{step}", body)
            if code != 202:
                errors.append(f"{code} {answer}")

    cpu_before = cpu_seconds(pids)
    started = run_clients(total, clients, client)
    submitted = time.perf_counter() - started
    deadline = time.monotonic() + timeout
    while _completed(probe) - before < total - len(errors):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{total} {step} tasks not completed in {timeout} s")
        time.sleep(probe_seconds)
    took = time.perf_counter() - started
    cpu = cpu_seconds(pids) - cpu_before
    return {"tasks_per_second": total / took, "submits_per_second": total / submitted, "errors": len(errors),
            "first_error": errors[0] if errors else None, "cpu_ms_per_task": 1000 * cpu / total,
            "cores_busy": cpu / took}


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
