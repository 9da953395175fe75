"""The runner's rules in this process, on the real store: stop, grace, timeout, FIFO, shutdown.

These replace timing assertions on server runs: each checks what happened, not how fast.
"""

from __future__ import annotations

import time

from api.runner import Runner
from api.task import Task, TaskStatus
from etl import registry


def _run(runner: Runner, step: str, **params) -> Task:
    model = registry.get_step(step, include_diagnostic=True).params_model.model_validate(params)
    task, _ = runner.submit(step, model, {}, {"role": "operator", "name": "test"}, None)
    return task


def _wait(runner: Runner, task_id: str, statuses: set[str], timeout: float = 20) -> Task:
    deadline = time.monotonic() + timeout
    while (task := runner.store.get(task_id)).status.value not in statuses:
        assert time.monotonic() < deadline, f"still {task.status.value}: {task.history}"
        time.sleep(0.02)
    return task


def test_a_stop_from_another_process_reaches_the_step_at_its_next_checkpoint(make_runner):
    runner = make_runner()
    task = _run(runner, "diag_sleep", seconds=60)
    runner.store.request_stop(task.task_id, {"role": "operator", "name": "other-process"})
    stopped = _wait(runner, task.task_id, {"stopped"})
    assert stopped.stopped_by == {"role": "operator", "name": "other-process"}
    assert [h["status"] for h in stopped.history] == ["queued", "running", "running", "stopped"]
    assert stopped.history[2]["reason"] == "stop requested"
    assert runner.running_here() == 0 and runner.store.live_running() == 0


def test_a_step_that_ignores_the_stop_is_abandoned_after_the_grace_period_and_frees_its_slot(make_runner):
    runner = make_runner(stop_grace_seconds=0.5, max_concurrent_tasks=1)
    stubborn = _run(runner, "diag_sleep", seconds=30, mode="ignore_stop")
    waiting = _run(runner, "diag_noop")
    assert waiting.status is TaskStatus.QUEUED
    runner.store.request_stop(stubborn.task_id, None)
    ended = _wait(runner, stubborn.task_id, {"stopped"})
    assert "abandoned" in ended.message and runner.abandoned == 1
    assert _wait(runner, waiting.task_id, {"completed"}).status is TaskStatus.COMPLETED  # the slot was freed


def test_a_step_past_the_timeout_fails_with_timeout(make_runner):
    runner = make_runner(task_timeout_seconds=0.3)
    task = _run(runner, "diag_sleep", seconds=30)
    failed = _wait(runner, task.task_id, {"failed"})
    assert failed.error["type"] == "Timeout"


def test_queued_tasks_start_in_submit_order_under_the_cap(make_runner):
    runner = make_runner(max_concurrent_tasks=1)
    tasks = [_run(runner, "diag_sleep", seconds=0.05) for _ in range(5)]
    assert [t.status for t in tasks] == [TaskStatus.RUNNING] + [TaskStatus.QUEUED] * 4
    ended = [_wait(runner, t.task_id, {"completed"}) for t in tasks]
    starts = [t.started_at for t in ended]
    assert starts == sorted(starts)
    for earlier, later in zip(ended, ended[1:]):
        assert earlier.completed_at <= later.started_at  # never two at once under cap 1


def test_shutdown_records_what_it_interrupted(make_runner):
    runner = make_runner()
    cooperative = _run(runner, "diag_sleep", seconds=60)
    stubborn = _run(runner, "diag_sleep", seconds=60, mode="ignore_stop")
    runner.shutdown(0.5)
    assert runner.store.get(cooperative.task_id).status is TaskStatus.STOPPED
    lost = runner.store.get(stubborn.task_id)
    assert lost.status is TaskStatus.FAILED and lost.error["type"] == "WorkerLost"


def test_a_result_that_cannot_be_stored_fails_the_task_instead_of_leaving_it_running(make_runner):
    """A step returning something JSON cannot hold must not keep its slot for ever."""
    from decimal import Decimal

    from pydantic import BaseModel

    from etl.registry import step

    class Nothing(BaseModel):
        pass

    @step("test_odd_result", Nothing, "Return an unstorable result", diagnostic=True)
    def odd(params: Nothing) -> dict:
        return {"total": Decimal("1.50"), "seen": {1, 2}}  # a Decimal is fine (exact text); a set is not

    try:
        runner = make_runner()
        task = _run(runner, "test_odd_result")
        failed = _wait(runner, task.task_id, {"failed"})
        assert "could not be recorded" in failed.error["message"]
        assert runner.store.live_running() == 0
    finally:
        registry._steps.pop("test_odd_result", None)


def test_a_decimal_in_a_result_is_kept_as_its_exact_text(make_runner):
    from decimal import Decimal

    from pydantic import BaseModel

    from etl.registry import step

    class Nothing(BaseModel):
        pass

    @step("test_money_result", Nothing, "Return money", diagnostic=True)
    def money(params: Nothing) -> dict:
        return {"total": Decimal("10954.76")}

    try:
        runner = make_runner()
        task = _run(runner, "test_money_result")
        assert _wait(runner, task.task_id, {"completed"}).result == {"total": "10954.76"}
    finally:
        registry._steps.pop("test_money_result", None)


def test_a_step_whose_ownership_is_not_confirmed_stops_at_its_next_checkpoint(tmp_path):
    """A process paused past the loss limit resumes with an expired confirmation: no more work."""
    from etl import runtime
    from etl.errors import StepStopped

    context = runtime.TaskContext(task_id="t", input_dir=tmp_path, output_dir=tmp_path, work_root=tmp_path,
                                  work_dir=tmp_path / "w")
    with runtime.bind(context):
        context.owned_until = time.monotonic() + 60
        runtime.check_stop()
        context.owned_until = time.monotonic() - 0.001
        try:
            runtime.check_stop()
        except StepStopped:
            pass
        else:
            raise AssertionError("the checkpoint let an unconfirmed owner run on")
    assert context.stop_reason == "lost"
