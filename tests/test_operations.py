"""The business-day and Trustee steps."""

from __future__ import annotations

import json
import sys

import pytest

from etl import registry
from etl.errors import CommandFailed, EtlError
from tests.scaleout import backend_server
from tests.server import Server

# The service-level test holds in both modes (local threads, and Celery worker hosts on Redis).
server = backend_server()


def run(step_name: str, **params):
    step = registry.get_step(step_name, include_diagnostic=False)
    return step.run(step.params_model.model_validate(params))


def test_business_days_across_carnival():
    friday = run("business_days", date="2026-02-13", offset=1)
    assert friday["result"] == "2026-02-18" and friday["next_business_day"] == "2026-02-18"
    carnival = run("business_days", date="2026-02-16")
    assert carnival["is_business_day"] is False and carnival["previous_business_day"] == "2026-02-13"
    week = run("business_days", date="2026-02-13", end="2026-02-20")
    assert week["business_days"] == ["2026-02-13", "2026-02-18", "2026-02-19", "2026-02-20"]
    assert run("business_days", date="2026-02-18", offset=-1)["result"] == "2026-02-13"


def test_trustee_runs_only_allow_listed_commands(monkeypatch, caplog):
    caplog.set_level("INFO")
    done = run("trustee_run", run_date="2026-02-18")
    assert done["exit_code"] == 0 and "processing positions of 18/02/2026" in caplog.text
    with pytest.raises(EtlError, match="not an allowed command"):
        run("trustee_run", command="rm")
    script = str(registry.get_step("trustee_run", False).func.__globals__["SAMPLE_TRUSTEE"]["sample"][1])
    monkeypatch.setenv("ETL_TRUSTEE_COMMANDS", json.dumps({"failing": [sys.executable, script, "--fail"]}))
    with pytest.raises(CommandFailed, match="exited with status 1"):
        run("trustee_run", command="failing")
    with pytest.raises(Exception):
        registry.get_step("trustee_run", False).params_model.model_validate({"command": "python -c 'x'"})


def test_operations_steps_through_the_service(server: Server):
    for name in ("business_days", "trustee_run"):
        task = server.run(name)
        final = server.wait_for(task["task_id"], timeout=60)
        assert final["status"] == "completed", final
    lines = server.client.get(f"/logs/{task['task_id']}").json()["lines"]
    assert any("Trustee: done" in line for line in lines)
