"""Secrets: resolved only in declared fields after validation, refused elsewhere at submit, masked
wherever they could surface (issue 10, findings 1-3), with the real runner on a real store and
through a real server."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, Field

from api.logs import JsonFormatter, MaskingFormatter
from api.runner import Runner
from api.settings import Settings
from api.store import TaskStore
from api.task import Task, TaskStatus, mask_secrets
from etl import registry, secrets
from etl.secrets import SecretField, SecretText
from tests.server import Server

# Longer than every max_length on the way, with the characters JSON and repr escape.
SECRET = 'Sup"er\\Secret-0123456789-abcdefghijklmnopqrstuvwxyz'


@pytest.fixture
def runner(store: TaskStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("ETL_SECRET_DBPASS", SECRET)
    settings = Settings(storage_dir=tmp_path / "storage", heartbeat_interval_seconds=0.2,
                        worker_lost_after_seconds=3)
    runner = Runner(store, settings)
    runner.start()
    yield runner
    runner.shutdown(5)


def _run(runner: Runner, step_name: str, parameters: dict) -> Task:
    step = registry.get_step(step_name, include_diagnostic=True)
    params = step.params_model.model_validate(parameters)
    task, _ = runner.submit(step_name, params, {"parameters": parameters}, None, None)
    deadline = time.monotonic() + 20
    while not (task := runner.store.get(task.task_id)).status.terminal:
        assert time.monotonic() < deadline, task.status
        time.sleep(0.02)
    return task


def _everywhere(store: TaskStore, task: Task) -> dict[str, str]:
    for _ in range(200):  # the task file follows the store on a writer thread
        path = store.paths.task_file(task.task_id)
        if path.exists() and json.loads(path.read_text(encoding="utf-8"))["status"] == task.status.value:
            break
        time.sleep(0.02)
    log_file = store.paths.log_file(task.task_id)
    return {
        "status": json.dumps(task.status_view(), ensure_ascii=False),
        "error": json.dumps(task.error, ensure_ascii=False),
        "result": json.dumps(task.result, ensure_ascii=False),
        "task file": store.paths.task_file(task.task_id).read_text(encoding="utf-8"),
        "log file": log_file.read_text(encoding="utf-8") if log_file.exists() else "",
    }


def _leaks(text: str) -> list[str]:
    """The secret or any 12-character piece of it, as is or escaped (pydantic quotes up to ~50 characters)."""
    pieces = {SECRET[i:i + 12] for i in range(len(SECRET) - 11)}
    forms = {form for piece in pieces for form in (piece, json.dumps(piece)[1:-1], repr(piece)[1:-1])}
    return sorted(form for form in forms if form in text)


def test_a_resolved_secret_never_meets_validation(runner: Runner):
    """Finding 1: the secret is resolved after validation, into the declared field, never validated again."""
    task = _run(runner, "diag_fail", {"message": "cannot log in", "credential": "${secret:dbpass}"})
    assert task.status is TaskStatus.FAILED and task.error["type"] == "DiagnosticFailure", task.error
    assert "ValidationError" not in task.error["traceback"]  # credential allows 40 characters; the secret has more
    assert "***" in task.error["message"]
    for where, text in _everywhere(runner.store, task).items():
        assert not _leaks(text), where
    assert '"credential": "${secret:dbpass}"' in _everywhere(runner.store, task)["task file"]


def test_resolution_touches_only_declared_fields(monkeypatch: pytest.MonkeyPatch):
    """Finding 2: only fields marked SecretField are resolved; GET /steps shows the mark."""
    monkeypatch.setenv("ETL_SECRET_DBPASS", SECRET)

    class Inner(BaseModel):
        password: SecretText | None = None
        label: str = ""

    class Params(BaseModel):
        model_config = ConfigDict(extra="allow")
        connection: SecretText = Field("", max_length=30)
        inner: Inner = Field(default_factory=Inner)
        many: list[Annotated[str, SecretField()]] = []
        where: str = ""

    assert secrets.secret_paths(Params) == (("connection",), ("inner", "password"), ("many", "*"))
    raw = {"connection": "DSN=x;PWD=${secret:dbpass}", "inner": {"password": "${secret:dbpass}", "label": "${secret:dbpass}"},
           "many": ["${secret:dbpass}"], "where": "'${secret:dbpass}' >= 'M'", "note": "${ Secret:dbpass}"}
    misplaced = secrets.misplaced_references(raw, secrets.secret_paths(Params))
    assert misplaced == [("inner", "label"), ("where",), ("note",)]
    params = Params.model_validate({k: v for k, v in raw.items() if k in ("connection", "inner", "many")})
    resolved = secrets.resolve_declared(params)
    assert resolved.connection == f"DSN=x;PWD={SECRET}"  # longer than its max_length 30: never validated again
    assert resolved.inner.password == SECRET and resolved.inner.label == "${secret:dbpass}"
    assert resolved.many == [SECRET]
    assert params.connection == "DSN=x;PWD=${secret:dbpass}"  # the validated model is left as it was
    schema = json.dumps(Params.model_json_schema())
    assert schema.count('"x-secret": true') == 3


def test_results_keep_their_keys_and_parameters_are_masked_by_declaration(runner: Runner):
    """Finding 3: result keys that merely contain 'pass'/'token' stay data; declared fields are masked."""
    data = {"passivo": 7, "Passivo Total": "1.234,56", "bypass": True, "tokens": 3, "compass": "N"}
    task = _run(runner, "diag_noop", {**data, "credential": "${secret:dbpass}", "senha": "typed-in-clear"})
    assert task.status is TaskStatus.COMPLETED, task.error
    assert {k: task.result[k] for k in data} == data
    assert task.result["credential"] == "***"
    file_params = json.loads(_everywhere(runner.store, task)["task file"])["params"]
    assert {k: file_params[k] for k in data} == data
    assert file_params["senha"] == "***" and file_params["credential"] == "${secret:dbpass}"
    # A declared field typed in clear is masked; a secret-named key only as a whole word.
    shown = mask_secrets({"credential": "clear", "tokens": 1, "apiKey": "k", "access_token": "t", "bypass": 1},
                         [["credential"]])
    assert shown == {"credential": "***", "tokens": 1, "apiKey": "***", "access_token": "***", "bypass": 1}


def test_log_lines_are_masked_before_json_encoding():
    """Finding 3: a secret holding a quote or a backslash is escaped by JSON; the mask still catches it."""
    secrets.remember(SECRET)
    record = logging.LogRecord("etl.x", logging.INFO, __file__, 1, "login with %s failed: %r", (SECRET, SECRET), None)
    assert not _leaks(JsonFormatter().format(record))
    assert not _leaks(MaskingFormatter("%(message)s").format(record))
    assert not _leaks(secrets.mask_text(json.dumps({"detail": f"input_value={SECRET!r}"})))


def test_no_secret_reaches_any_output_through_a_server(make_server):
    """Findings 1 and 2 over HTTP: references outside declared fields are 422 at submit (naming the
    field), and a secret quoted by a failing step shows nowhere: status, output, logs, task file, server log."""
    srv: Server = make_server(workers=1, secret_odbc_prod=SECRET, secret_portal_password=SECRET, log_format="json")
    refused = {
        "reading_config_comp": ({"runEnv": "${secret:odbc_prod}"}, "parameters.runEnv"),
        "filter": ({"where": "'${secret:portal_password}' >= 'X'"}, "parameters.where"),
        "diag_fail": ({"message": "${secret:odbc_prod}"}, "parameters.message"),
        "diag_noop": ({"nested": {"note": ["${secret:odbc_prod}"]}}, "parameters.nested.note.0"),
    }
    for step, (parameters, field) in refused.items():
        response = srv.client.post(f"/run/{step}", json={"parameters": parameters})
        assert response.status_code == 422, (step, response.text)
        assert field in [e["field"] for e in response.json()["errors"]], response.text
        assert field in response.json()["detail"]
    custom = srv.client.post("/run/diag_noop", json={"custom_params": {"x": "${secret:odbc_prod}"}})
    assert custom.status_code == 422 and custom.json()["errors"][0]["field"] == "custom_params.x"
    schema = srv.client.get("/steps/diag_fail").json()["parameters"]
    assert schema["properties"]["credential"]["x-secret"] is True and "x-secret" not in schema["properties"]["message"]

    failing = srv.run("diag_fail", message="cannot log in", credential="${secret:odbc_prod}")
    echoed = srv.run("diag_noop", credential="${secret:portal_password}", passivo=1)
    for task in (failing, echoed):
        srv.wait_for(task["task_id"])
    final = srv.status(failing["task_id"])
    assert final["status"] == "failed" and "***" in final["error"]["message"]
    places = {"server log": ""}
    for task in (failing, echoed):
        task_id = task["task_id"]
        places.update({
            f"status {task_id}": srv.client.get(f"/status/{task_id}").text,
            f"output {task_id}": srv.client.get(f"/output/{task_id}").text,
            f"logs {task_id}": srv.client.get(f"/logs/{task_id}").text,
            f"task file {task_id}": srv.task_file(task_id),
        })
    assert srv.client.get(f"/output/{echoed['task_id']}").json()["result"]["passivo"] == 1
    places["audit"] = (srv.storage / "audit.log").read_text(encoding="utf-8")
    places["server log"] = srv.log_text()
    for where, text in places.items():
        assert not _leaks(text), where
    assert "***" in places[f"logs {failing['task_id']}"]
