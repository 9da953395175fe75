"""The step runtime and registry, used directly (as steps and `python -m etl` use them)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time

import pytest

from etl import registry, runtime
from etl.errors import CommandFailed, StepStopped, UnknownStep
from etl.process import run_command
from tests.server import ROOT


def _context(tmp_path, task_id="t1") -> runtime.TaskContext:
    return runtime.TaskContext(task_id=task_id, input_dir=tmp_path, output_dir=tmp_path / "out",
                               work_root=tmp_path / "work", work_dir=tmp_path / "work" / "tasks" / task_id,
                               log_file=tmp_path / f"{task_id}.log")


def test_runtime_calls_are_noops_outside_a_task():
    runtime.progress(50, "half")
    runtime.check_stop()
    assert not runtime.stop_requested()
    runtime.sleep(0.01)
    runtime.add_artifact("x")


def test_progress_stop_and_artifacts_inside_a_task(tmp_path):
    context = _context(tmp_path)
    with runtime.bind(context):
        runtime.progress(140, "almost")
        assert context.progress == 100 and context.message == "almost"
        runtime.add_artifact(tmp_path / "report.xlsx")
        assert runtime.work_dir().is_dir()
        context.request_stop("request")
        with pytest.raises(StepStopped):
            runtime.check_stop()
        with pytest.raises(StepStopped):
            runtime.sleep(10)
    assert context.artifacts == [str((tmp_path / "report.xlsx").resolve())]
    assert runtime.current() is None


def test_task_log_handler_captures_only_the_tasks_own_thread(tmp_path):
    handler = runtime.TaskLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("etl.test")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        contexts = [_context(tmp_path, f"t{i}") for i in range(2)]

        def work(context):
            with runtime.bind(context):
                for n in range(50):
                    log.info("%s line %d", context.task_id, n)

        threads = [threading.Thread(target=work, args=(c,)) for c in contexts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        log.info("not a task line")
    finally:
        log.removeHandler(handler)
    for context in contexts:
        lines = context.log_file.read_text().splitlines()
        assert len(lines) == 50 and all(line.startswith(context.task_id) for line in lines)
        assert context.log_lines == 50 and list(context.log_tail)[-1] == f"{context.task_id} line 49"


def test_run_command_streams_output_and_fails_clearly(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    assert run_command([sys.executable, "-c", "print('hello from child')"]) == 0
    assert "hello from child" in caplog.text
    with pytest.raises(CommandFailed, match="exited with status 3"):
        run_command([sys.executable, "-c", "import sys; sys.exit(3)"])
    with pytest.raises(CommandFailed, match="did not finish within"):
        run_command([sys.executable, "-c", "import time; time.sleep(30)"], timeout_seconds=0.5)


def test_stop_kills_a_running_command(tmp_path):
    context = _context(tmp_path)
    timer = threading.Timer(0.5, context.request_stop, args=("request",))
    started = time.monotonic()
    with runtime.bind(context):
        timer.start()
        with pytest.raises(StepStopped):
            run_command([sys.executable, "-c", "import time; time.sleep(30)"])
    assert time.monotonic() - started < 5


def test_registry_lookup_and_schemas():
    steps = registry.available(include_diagnostic=False)
    assert "diag_noop" not in steps
    with pytest.raises(UnknownStep, match="diag_noop"):
        registry.get_step("diag_nop", include_diagnostic=True)
    schema = registry.get_step("diag_sleep", True).parameters_schema()
    assert schema["properties"]["mode"]["enum"] == ["cooperative", "ignore_stop", "subprocess"]


def test_cli_runs_a_step_without_the_server():
    done = subprocess.run([sys.executable, "-m", "etl", "diag_noop", "--fund", "Fundo Ação", "--n", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"fund": "Fundo Ação", "n": 3}
    bad = subprocess.run([sys.executable, "-m", "etl", "diag_sleep", "--seconds", "x"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "seconds" in bad.stderr
    failed = subprocess.run([sys.executable, "-m", "etl", "diag_fail", "--message", "boom"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "boom" in failed.stderr
