"""A real server for tests: Gunicorn (or `python -m api serve`) on a free 127.0.0.1 port, stopped after."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
TERMINAL = {"completed", "failed", "stopped"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One server process tree with its own storage folder."""

    def __init__(self, storage: Path, *, kind: str = "gunicorn", workers: int = 4,
                 probe_headers: dict[str, str] | None = None, port: int | None = None, root: Path = ROOT,
                 **settings: Any) -> None:
        self.storage = storage
        self.root = root  # the checkout to run (benchmarks compare against another one)
        self.kind = kind
        self.workers = workers
        self.port = port or free_port()  # a given port: a restart on the address clients already use
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
        self.env.update({
            "ETL_HOST": "127.0.0.1",
            "ETL_PORT": str(self.port),
            "ETL_WORKERS": str(workers),
            "ETL_STORAGE_DIR": str(storage),
            "ETL_DIAGNOSTIC_STEPS": "1",
            "ETL_GRACEFUL_TIMEOUT_SECONDS": "15",
            "ETL_STOP_GRACE_SECONDS": "2",
        })
        # TEST_WORKER_CLASS=asgi runs the whole suite on Gunicorn's own ASGI worker
        settings.setdefault("worker_class", os.environ.get("TEST_WORKER_CLASS", "uvicorn"))
        # Tests drive their private server as its admin; anonymous_role=None leaves the default (operator).
        settings.setdefault("anonymous_role", "admin")
        self.env.update({f"ETL_{k.upper()}": str(v) for k, v in settings.items() if v is not None})
        self.proc: subprocess.Popen | None = None
        self.log_path = storage.parent / f"server-{self.port}.log"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self.probe_headers = probe_headers or {}

    def start(self, timeout: float = 60) -> Server:
        if self.kind == "gunicorn":
            command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        else:
            command = [sys.executable, "-m", "api", "serve"]
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(command, cwd=self.root, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self.wait_workers(timeout)

    def wait_workers(self, timeout: float = 60) -> Server:
        """Wait until every worker heartbeats (after start, or after a worker was killed)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                stats = self.client.get("/stats", headers=self.probe_headers).json()
                # Scale-out mode also lists the worker hosts' pool processes (role "worker").
                if sum(1 for w in stats["workers"] if w["alive"] and w.get("role") != "worker") >= self.workers:
                    return self
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout} s:\n{self.log_text()[-3000:]}")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return [p.pid for p in psutil.Process(self.proc.pid).children() if p.name() != "sh"]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        with_group = self.proc.pid
        try:
            os.killpg(with_group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(10)
        self.log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def close(self) -> None:
        """Stop everything this server started (scale-out mode adds Redis and a worker host)."""
        self.stop()

    @property
    def backend(self) -> str:
        return self.env.get("ETL_BACKEND", "local")

    # --- helpers -------------------------------------------------------------------------

    def run(self, step: str, client: httpx.Client | None = None, **params: Any) -> dict[str, Any]:
        response = (client or self.client).post(f"/run/{step}", json={"parameters": params})
        assert response.status_code == 202, response.text
        return response.json()

    def status(self, task_id: str) -> dict[str, Any]:
        response = self.client.get(f"/status/{task_id}", headers=self.probe_headers)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_for(self, task_id: str, statuses: set[str] | None = None, timeout: float = 30) -> dict[str, Any]:
        statuses = statuses or TERMINAL
        deadline = time.monotonic() + timeout
        while True:
            try:
                state = self.status(task_id)
            except httpx.TransportError:  # the connection's worker was killed; the next one is fresh
                time.sleep(0.02)
                continue
            if state["status"] in statuses:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} still {state['status']} after {timeout} s: {state}")
            time.sleep(0.02)

    def wait_started(self, task_id: str, timeout: float = 30) -> dict[str, Any]:
        """The state once a worker runs the step (scale-out mode: a dispatched task is running with no worker yet)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.wait_for(task_id, {"running", *TERMINAL}, timeout)
            if state["status"] != "running" or state["worker"]:
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} was not started by a worker in {timeout} s: {state}")
            time.sleep(0.02)

    def task_file(self, task_id: str, timeout: float = 10) -> str:
        """The text of the task's JSON file once it shows the ended task (it follows the store on a writer thread)."""
        ended = self.wait_for(task_id)["status"]
        path = self.storage / f"{task_id}.json"
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                text = path.read_text(encoding="utf-8")
                if json.loads(text)["status"] == ended:
                    return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{path} does not show the task {ended} after {timeout} s")
            time.sleep(0.02)

    def serving_pid(self, client: httpx.Client) -> int:
        """The API worker process that holds this client's (kept-alive) connection."""
        response = client.get("/livez")
        port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        for pid in self.worker_pids():
            with contextlib.suppress(psutil.Error):
                for conn in psutil.Process(pid).net_connections("tcp"):
                    if conn.laddr and conn.laddr.port == self.port and conn.raddr and conn.raddr.port == port:
                        return pid
        raise AssertionError(f"no worker holds the connection from port {port}")

    def clients_by_worker(self, wanted: int = 2, attempts: int = 5) -> dict[int, httpx.Client]:
        """Persistent connections, keyed by the API worker pid that serves each.

        In local mode that worker also runs a task submitted on it while a slot is free.
        """
        found: dict[int, httpx.Client] = {}
        for _ in range(attempts):
            for _ in range(8):
                client = httpx.Client(base_url=self.url, timeout=30)
                task = self.wait_for(self.run("diag_noop", client=client)["task_id"])
                # Local mode: the accepting worker ran it. Scale-out mode: a worker host did, so the
                # API worker is the one holding the connection.
                pid = task["worker"]["pid"] if self.backend == "local" else self.serving_pid(client)
                if pid in found:
                    client.close()
                else:
                    found[pid] = client
            if len(found) >= wanted:
                return found
        raise AssertionError(f"connections reached only {len(found)} worker(s)")
