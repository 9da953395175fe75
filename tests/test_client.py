"""The Python client and the command line against a real 4-worker Gunicorn."""

from __future__ import annotations

import http.server
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest

from api.client import Client, Conflict, Forbidden, InvalidParameters, NotFound, TaskFailed, Unauthorized, WaitTimeout
from api.client.retry import backoff, parse_retry_after
from tests.scaleout import BACKENDS, CeleryServer, backend_server
from tests.server import ROOT, Server

pytestmark = pytest.mark.timeout(180)

# The client and the command line see the same service in both modes.
server = backend_server()


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of the server that, when armed, swallows the answer to one POST /run.

    The request reaches the server (which accepts the task); the client only sees its connection
    close, as when a network drops a response.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.armed = threading.Event()
        self.dropped = 0
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [downstream, upstream]
            saw_run = threading.Event()
            threading.Thread(target=self._pump, args=(downstream, upstream, saw_run, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, downstream, saw_run, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, saw_run: threading.Event, request: bool) -> None:
        try:
            while data := source.recv(65536):
                if request and b"POST /run/" in data:
                    saw_run.set()
                if not request and saw_run.is_set() and self.armed.is_set():
                    self.armed.clear()
                    self.dropped += 1
                    for sock in (source, sink):
                        sock.shutdown(socket.SHUT_RDWR)
                        sock.close()
                    return
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


def cli(srv: Server, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["ETL_URL"] = srv.url
    return subprocess.run([sys.executable, "-m", "api", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


def diag_noop_count(client: Client) -> int:
    return sum(1 for _ in client.tasks(step="diag_noop"))


# --- the Python client ---------------------------------------------------------------------------

def test_run_and_wait_returns_the_result(server):
    params = {"fund": "Fundo Ação", "cnpj": "00012345000195", "amount": "1234.56"}
    with Client(server.url) as client:
        task = client.run("diag_noop", params, wait=True, timeout=30)
        assert task.status == "completed"
        assert task.result() == params
        assert client.output(task.task_id)["result"] == params
        assert client.task(task.task_id).result() == params


def test_a_failed_task_raises_with_the_servers_error_type_and_message(server):
    with Client(server.url) as client:
        with pytest.raises(TaskFailed) as failure:
            client.run("diag_fail", {"message": "saldo não confere"}, wait=True, timeout=30)
    assert failure.value.error_type == "DiagnosticFailure"
    assert failure.value.error_message == "saldo não confere"
    assert "DiagnosticFailure: saldo não confere" in str(failure.value)
    assert failure.value.task_id
    assert server.status(failure.value.task_id)["status"] == "failed"


def test_client_mistakes_raise_typed_errors_with_the_servers_detail(server):
    with Client(server.url) as client:
        with pytest.raises(InvalidParameters) as invalid:
            client.run("diag_sleep", {"seconds": "soon"})
        assert [e["field"] for e in invalid.value.errors] == ["parameters.seconds"]
        assert "parameters.seconds" in invalid.value.detail
        with pytest.raises(NotFound, match="no_such_step"):
            client.run("no_such_step")
        with pytest.raises(NotFound):
            client.status("00000000-0000-7000-8000-000000000000")
        done = client.run("diag_noop", wait=True, timeout=30)
        with pytest.raises(Conflict, match="already completed"):
            done.stop()
        with pytest.raises(Conflict, match="different request"):
            key = uuid.uuid4().hex
            client.run("diag_noop", {"n": "1"}, idempotency_key=key)
            client.run("diag_noop", {"n": "2"}, idempotency_key=key)


def test_keys_and_roles_raise_typed_errors_and_exit_6(make_server):
    srv = make_server(api_keys="viewer:v-key-123456,operator:o-key-123456",
                      probe_headers={"Authorization": "Bearer v-key-123456"})
    with Client(srv.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.run("diag_noop")
    with Client(srv.url, api_key="v-key-123456") as viewer, pytest.raises(Forbidden, match="role"):
        viewer.run("diag_noop")
    with Client(srv.url, api_key="o-key-123456") as operator:
        assert operator.run("diag_noop", {"a": "b"}, wait=True, timeout=30).result() == {"a": "b"}
    assert cli(srv, "run", "diag_noop", "--api-key", "v-key-123456").returncode == 6
    assert cli(srv, "run", "diag_noop", "--api-key", "o-key-123456", "--wait").returncode == 0


def test_backoff_never_comes_before_retry_after():
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past: at once
    assert 55 < parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60))) <= 60
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert all(5.0 <= backoff(attempt, 5.0) <= 5.5 for attempt in range(10))
    delays = [backoff(attempt, None) for attempt in range(12)]
    assert all(0.05 <= d <= 10.0 for d in delays) and max(delays[6:]) > 1.0


def test_a_lost_submit_answer_is_retried_and_starts_exactly_one_task(server):
    proxy = DroppingProxy(server.port)
    try:
        with Client(proxy.url) as client:
            before = diag_noop_count(client)
            proxy.armed.set()
            marker = uuid.uuid4().hex
            task = client.run("diag_noop", {"marker": marker}, wait=True, timeout=30)
            assert proxy.dropped == 1  # the server's first answer never reached the client
            assert task.replayed  # the retry carried the same Idempotency-Key
            assert task.result() == {"marker": marker}
            assert diag_noop_count(client) == before + 1
    finally:
        proxy.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_queue_is_waited_out_as_retry_after_says(make_server, caplog, backend):
    srv = make_server(backend=backend, max_concurrent_tasks=1, max_queued_tasks=0)
    blocker = srv.run("diag_sleep", seconds=2)
    with Client(srv.url) as client, caplog.at_level(logging.WARNING, logger="api.client"):
        task = client.run("diag_noop", {"after": "queue"}, wait=True, timeout=60)
    assert task.result() == {"after": "queue"}
    waits = [float(m) for m in re.findall(r"429: .*; retry \d+ in ([\d.]+) s", caplog.text)]
    assert waits and all(w >= 5 for w in waits), caplog.text  # the server's Retry-After is 5 s
    assert srv.wait_for(blocker["task_id"])["status"] == "completed"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_server_restart_during_the_wait_still_returns_the_result(make_server, caplog, backend):
    srv = make_server(backend=backend, max_concurrent_tasks=1)
    # Scale-out mode: the blocker runs on a worker host, which the API crash does not touch.
    scale_out = isinstance(srv, CeleryServer)
    blocker = srv.run("diag_sleep", seconds=6 if scale_out else 120)
    outcome: dict[str, Any] = {}

    def wait() -> None:
        try:
            with Client(srv.url) as client:
                outcome["result"] = client.run("diag_noop", {"after": "restart"}, wait=True, timeout=120).result()
        except Exception as exc:  # reported by the assertion below
            outcome["error"] = exc

    with caplog.at_level(logging.WARNING, logger="api.client"):
        waiter = threading.Thread(target=wait)
        waiter.start()
        deadline = time.monotonic() + 20
        while not srv.client.get("/tasks", params={"status": "queued"}).json()["tasks"]:
            assert time.monotonic() < deadline, "the waited task was never queued"
            time.sleep(0.05)
        # A crash, not a clean stop: the queued task can only run on the restarted server, once
        # it has found the blocker's worker dead.
        if scale_out:
            srv.stop_api(signal.SIGKILL)  # the API hosts only: Redis and the worker host go on
            restarted = srv.start()
        else:
            srv.stop(signal.SIGKILL)
            restarted = make_server(srv.storage, port=srv.port, max_concurrent_tasks=1)
        waiter.join(90)
    assert not waiter.is_alive()
    assert outcome == {"result": {"after": "restart"}}, outcome
    assert "retry" in caplog.text  # the wait did cross the outage
    if scale_out:
        # Nothing was lost with the API hosts: the blocker ran to its end on the worker host.
        assert restarted.wait_for(blocker["task_id"], timeout=10)["status"] == "completed"
    else:
        # The dead owner's slot is free at once; its task is marked lost within seconds (design §6).
        assert restarted.wait_for(blocker["task_id"], timeout=10)["error"]["type"] == "WorkerLost"


def test_a_wait_that_times_out_carries_the_task_id(server):
    with Client(server.url) as client:
        with pytest.raises(WaitTimeout) as timeout:
            client.run("diag_sleep", {"seconds": 30}, wait=True, timeout=0.5)
        task_id = timeout.value.task_id
        assert server.status(task_id)["status"] == "running"  # the task keeps running
        client.stop(task_id)
    assert server.wait_for(task_id)["status"] == "stopped"


def test_follow_yields_every_log_line_in_order(server):
    with Client(server.url) as client:
        task = client.run("diag_sleep", {"seconds": 1.5, "log_every": 0.05})
        events = list(task.follow(timeout=30))
        lines = [e.text for e in events if e.type == "log"]
        assert events[-1].type == "end" and events[-1].data["status"] == "completed"
        assert lines == client.logs(task.task_id)["lines"]
        assert sum(1 for line in lines if re.search(r"line \d+$", line)) >= 20


# --- the command line ----------------------------------------------------------------------------

def test_cli_exit_codes_for_completed_and_failed(server):
    done = cli(server, "run", "diag_noop", "--param", "cnpj=00012345000195", "--param", "n:=7", "--wait", "--json")
    assert done.returncode == 0, done.stderr
    state = json.loads(done.stdout)
    assert state["status"] == "completed" and state["output"] == {"cnpj": "00012345000195", "n": 7}
    human = cli(server, "run", "diag_noop", "--param", "fund=Fundo Ação", "--wait")
    assert human.returncode == 0 and json.loads(human.stdout) == {"fund": "Fundo Ação"}
    failed = cli(server, "run", "diag_fail", "--param", "message=boom", "--wait")
    assert failed.returncode == 1
    assert "DiagnosticFailure: boom" in failed.stderr


def test_cli_exit_code_for_a_stopped_task(server):
    started = cli(server, "run", "diag_sleep", "--param", "seconds=60")
    assert started.returncode == 0, started.stderr
    task_id = started.stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    waiter = subprocess.Popen([sys.executable, "-m", "api", "--url", server.url, "wait", task_id], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        server.wait_for(task_id, {"running"})
        time.sleep(0.5)  # let the waiter start its long-poll
        assert cli(server, "stop", task_id).returncode == 0
        assert waiter.wait(30) == 3
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


def test_cli_exit_code_for_a_timeout_names_the_running_task(server):
    timed_out = cli(server, "run", "diag_sleep", "--param", "seconds=30", "--wait", "--timeout", "1")
    assert timed_out.returncode == 4, timed_out.stderr
    task_id = timed_out.stdout.strip()
    assert server.status(task_id)["status"] == "running"
    server.client.post(f"/stop/{task_id}")
    assert server.wait_for(task_id)["status"] == "stopped"


def test_cli_exit_codes_for_usage_not_found_and_unreachable(server, tmp_path):
    assert cli(server, "run", "diag_sleep", "--param", "seconds").returncode == 2
    invalid = cli(server, "run", "diag_sleep", "--param", "seconds=soon")
    assert invalid.returncode == 2 and "parameters.seconds" in invalid.stderr
    assert cli(server, "status", "00000000-0000-7000-8000-000000000000").returncode == 7
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    unreachable = cli(server, "health", "--url", f"http://127.0.0.1:{port}", "--timeout", "1")
    assert unreachable.returncode == 5 and "unreachable" in unreachable.stderr


def test_cli_follow_prints_every_log_line_of_a_running_task_in_order(server):
    task = server.run("diag_sleep", seconds=2, log_every=0.04)
    server.wait_for(task["task_id"], {"running"})
    followed = cli(server, "logs", task["task_id"], "--follow")
    assert followed.returncode == 0, followed.stderr
    logged = server.client.get(f"/logs/{task['task_id']}").json()["lines"]
    assert followed.stdout.splitlines() == logged
    assert sum(1 for line in logged if re.search(r"line \d+$", line)) >= 30
    run = cli(server, "run", "diag_sleep", "--param", "seconds=1", "--param", "log_every=0.05", "--follow")
    assert run.returncode == 0, run.stderr
    task_id = re.search(r"task ([0-9a-f-]{36}) running", run.stderr).group(1)
    logged = server.client.get(f"/logs/{task_id}").json()["lines"]
    printed = run.stdout.splitlines()
    assert printed[:len(logged)] == logged  # then the result document
    assert json.loads("\n".join(printed[len(logged):])) == {"slept_seconds": pytest.approx(1, abs=0.5)}


def test_the_client_and_cli_import_nothing_of_the_server():
    # A script host may have only httpx: the client path must not need FastAPI, diskcache or pandas.
    blocked = ("fastapi", "starlette", "diskcache", "pandas", "pydantic", "pydantic_settings", "uvicorn", "etl",
               "api.settings", "api.store", "api.main")
    code = (f"import sys\nfor name in {blocked!r}: sys.modules[name] = None\n"
            "from api.client import Client\nimport api.cli, api.__main__\nprint('imported')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-2000:]


class EventStream(http.server.BaseHTTPRequestHandler):
    """GET /events/{id} as the event stream is specified (status/progress/log/end, Last-Event-ID resume).

    A stand-in because the service does not serve that stream yet: the first connection breaks
    after two events, the resumed one must say where it stopped.
    """

    seen_last_ids: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 (the http.server spelling)
        last = self.headers.get("Last-Event-ID")
        self.seen_last_ids.append(last)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        if last is None:
            events = [("status", 1, {"status": "running", "progress": 0}), ("log", 2, {"line": 1, "text": "um"})]
        else:
            events = [("log", 3, {"line": 2, "text": "dois"}), ("progress", 4, {"progress": 100.0}),
                      ("end", 5, {"status": "completed", "output": {"ok": True}})]
        for kind, number, data in events:
            self.wfile.write(f": keep-alive\nevent: {kind}\nid: {number}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


def test_follow_reads_the_event_stream_and_resumes_it_after_a_break():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EventStream)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with Client(f"http://127.0.0.1:{httpd.server_address[1]}") as client:
            events = list(client.follow("00000000-0000-7000-8000-000000000001", timeout=20))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert [(e.type, e.id) for e in events] == [("status", "1"), ("log", "2"), ("log", "3"), ("progress", "4"),
                                                ("end", "5")]
    assert [e.text for e in events if e.type == "log"] == ["um", "dois"]
    assert EventStream.seen_last_ids == [None, "2"]


def test_a_wait_whose_time_runs_out_while_the_server_is_down_still_names_the_task(make_server, tmp_path):
    """The timeout error carries the task id even when the last calls found no server."""
    srv: Server = make_server(tmp_path / "task_storage", workers=2)
    with Client(srv.url, timeout=5) as client:
        task = client.run("diag_sleep", {"seconds": 60})
        srv.stop(signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(WaitTimeout) as timed_out:
            task.wait(timeout=3)
        assert timed_out.value.task_id == task.task_id
        assert time.monotonic() - started < 15
