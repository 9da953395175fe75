"""Pipelines against a real 4-worker Gunicorn: parallel branches, skips, stop, retry of failed nodes."""

from __future__ import annotations

import time
from pathlib import Path


from tests.scaleout import backend_server
from tests.server import ROOT, Server

PIPELINES = ROOT / "tests" / "pipelines"


# Pipelines behave the same in both modes: local (threads) and celery (nodes on a worker host).
srv = backend_server(pipelines_dir=PIPELINES, max_concurrent_tasks=6)


def run(srv: Server, name: str, **body) -> dict:
    response = srv.client.post(f"/pipelines/{name}/run", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def on_a_worker(srv: Server, task_id: str, timeout: float = 20) -> dict:
    """The task once a worker runs it (in scale-out mode "running" starts at dispatch, before a claim)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = srv.status(task_id)
        if state["status"] == "running" and state.get("worker"):
            return state
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} did not start on a worker: {state}")


def nodes_of(state: dict) -> dict[str, dict]:
    return state["pipeline"]["nodes"]


def test_diamond_runs_its_two_branches_in_parallel(srv: Server):
    started = run(srv, "diamond")
    assert started["nodes"]["a"]["task_id"] and started["nodes"]["d"]["state"] == "pending"
    final = srv.wait_for(started["task_id"], timeout=60)
    assert final["status"] == "completed", final
    nodes = nodes_of(final)
    assert final["pipeline"]["summary"]["total"] == 4 and final["pipeline"]["summary"]["succeeded"] == 4
    children = {name: srv.status(node["task_id"]) for name, node in nodes.items()}
    b, c = children["b"], children["c"]
    assert b["started_at"] < c["completed_at"] and c["started_at"] < b["completed_at"], "b and c overlap"
    assert children["a"]["completed_at"] <= min(b["started_at"], c["started_at"])
    assert children["d"]["started_at"] >= max(b["completed_at"], c["completed_at"])
    assert children["d"]["output"] == {"from_a": "A"}
    for child in children.values():
        assert child["parent_id"] == started["task_id"] and child["status"] == "completed"
    # the child's JSON file links back to its pipeline task
    text = srv.task_file(nodes["d"]["task_id"])
    assert f'"parent_id": "{started["task_id"]}"' in text and '"node": "d"' in text
    listed = srv.client.get("/tasks", params={"step": "diag_sleep"}).json()["tasks"]
    assert {t["node"] for t in listed if t.get("parent_id") == started["task_id"]} == {"b", "c"}


def test_a_failing_node_skips_only_its_dependants_then_retry_reruns_them(srv: Server):
    key = f"branches-{time.time_ns()}"
    started = run(srv, "branches", parameters={"key": key})
    final = srv.wait_for(started["task_id"], timeout=60)
    assert final["status"] == "failed", final
    nodes = nodes_of(final)
    states = {name: node["state"] for name, node in nodes.items()}
    assert states == {"start": "completed", "flaky": "failed", "after_flaky": "skipped", "last": "skipped",
                      "other": "completed", "after_other": "completed"}
    assert nodes["after_flaky"]["reason"] == "skipped: node flaky failed"
    assert nodes["last"]["reason"] == "skipped: node after_flaky skipped"
    assert nodes["after_flaky"]["task_id"] is None, "a skipped node never becomes a task"
    assert final["error"]["type"] == "PipelineFailed" and "flaky" in final["error"]["message"]
    summary = final["pipeline"]["summary"]
    assert (summary["failed"], summary["skipped"], summary["succeeded"]) == (1, 2, 3)
    dead = srv.client.get("/dead-letters").json()["dead_letters"]
    assert started["task_id"] in {d["task_id"] for d in dead}
    assert nodes["flaky"]["task_id"] not in {d["task_id"] for d in dead}, "the pipeline is the dead letter"

    retried = srv.client.post(f"/retry/{started['task_id']}")
    assert retried.status_code == 202, retried.text
    again = srv.wait_for(retried.json()["task_id"], timeout=60)
    assert again["status"] == "completed", again
    assert again["retry_of"] == started["task_id"] and again["attempt"] == 2
    new_nodes = nodes_of(again)
    for name in ("start", "other", "after_other"):
        assert new_nodes[name]["task_id"] == nodes[name]["task_id"], f"{name} kept, not re-run"
    for name in ("flaky", "after_flaky", "last"):
        assert new_nodes[name]["task_id"] not in (None, nodes[name]["task_id"]), f"{name} re-run"
    old = srv.status(started["task_id"])
    assert old["status"] == "failed" and old["retried_as"]["task_id"] == again["task_id"]
    assert started["task_id"] not in {d["task_id"] for d in srv.client.get("/dead-letters").json()["dead_letters"]}
    # a repeat of the retry is the same new run
    assert srv.client.post(f"/retry/{started['task_id']}").json()["task_id"] == again["task_id"]
    assert srv.client.post(f"/retry/{again['task_id']}").status_code == 409, "a completed pipeline has nothing to retry"


def test_stop_of_a_running_pipeline_stops_children_and_starts_nothing_more(srv: Server):
    started = run(srv, "long")
    first = started["nodes"]["first"]["task_id"]
    srv.wait_for(first, {"running"})
    response = srv.client.post(f"/stop/{started['task_id']}")
    assert response.status_code == 202, response.text
    final = srv.wait_for(started["task_id"], timeout=20)
    assert final["status"] == "stopped", final
    nodes = nodes_of(final)
    assert nodes["first"]["state"] == "stopped" and nodes["side"]["state"] == "stopped"
    assert nodes["then"]["state"] == "not_started" and nodes["then"]["task_id"] is None
    assert srv.status(first)["status"] == "stopped"
    time.sleep(1)
    assert nodes_of(srv.status(started["task_id"]))["then"]["task_id"] is None


def test_node_retries_with_backoff_inside_a_pipeline(srv: Server):
    key = f"retrying-{time.time_ns()}"
    started = run(srv, "retrying", parameters={"key": key})
    final = srv.wait_for(started["task_id"], timeout=60)
    assert final["status"] == "completed", final
    flaky = srv.status(nodes_of(final)["flaky"]["task_id"])
    assert flaky["attempt"] == 3 and [a["error"]["type"] for a in flaky["attempts"]] == ["ConnectionError"] * 2
    waits = [h for h in flaky["history"] if "no slot held" in h["reason"]]
    assert len(waits) == 2 and "attempt 2 of 3" in waits[0]["reason"] and "attempt 3 of 3" in waits[1]["reason"]
    assert nodes_of(final)["flaky"]["attempt"] == 3


def test_bad_definitions_and_runs_are_refused_naming_node_and_field(srv: Server):
    def check(definition: dict) -> dict:
        response = srv.client.post("/pipelines/x/validate", json=definition)
        assert response.status_code == 422, response.text
        return response.json()

    base = {"name": "x", "nodes": {"a": {"step": "diag_noop"}}}
    assert srv.client.post("/pipelines/x/validate", json=base).status_code == 200
    cycle = check({"name": "x", "nodes": {"a": {"step": "diag_noop", "depends_on": ["b"]},
                                          "b": {"step": "diag_noop", "depends_on": ["a"]}}})
    assert "cycle" in cycle["detail"] and cycle["errors"][0]["node"] in ("a", "b")
    unknown = check({"name": "x", "nodes": {"a": {"step": "diag_nope"}}})
    assert unknown["errors"][0] == {**unknown["errors"][0], "node": "a", "field": "nodes.a.step"}
    bad = check({"name": "x", "nodes": {"a": {"step": "diag_sleep", "params": {"seconds": "soon"}}}})
    assert bad["errors"][0]["field"] == "nodes.a.params.seconds"
    missing = check({"name": "x", "nodes": {"a": {"step": "diag_noop", "depends_on": ["ghost"]}}})
    assert missing["errors"][0]["node"] == "a" and "ghost" in missing["errors"][0]["msg"]
    ref = check({"name": "x", "nodes": {"a": {"step": "diag_noop", "params": {"v": "${run.nope}"}}}})
    assert "nope" in ref["detail"]
    assert srv.client.post("/pipelines/ghost/run").status_code == 404
    wrong = srv.client.post("/pipelines/diamond/run", json={"parameters": {"seconds": "x"}})
    assert wrong.status_code == 422 and wrong.json()["errors"][0]["field"].startswith("nodes.b.params.seconds")
    extra = srv.client.post("/pipelines/diamond/run", json={"parameters": {"colour": 1}})
    assert extra.status_code == 422 and extra.json()["errors"][0]["field"] == "parameters.colour"
    only = srv.client.post("/pipelines/diamond/run", json={"only": ["zzz"]})
    assert only.status_code == 422 and only.json()["errors"][0]["field"] == "only"
    listed = {p["name"]: p for p in srv.client.get("/pipelines").json()["pipelines"]}
    assert listed["diamond"]["valid"] and listed["diamond"]["nodes"] == ["a", "b", "c", "d"]


def test_only_runs_the_selected_nodes(srv: Server):
    started = run(srv, "diamond", only=["a", "b"], parameters={"seconds": 0.1})
    final = srv.wait_for(started["task_id"], timeout=30)
    states = {n: v["state"] for n, v in nodes_of(final).items()}
    assert states == {"a": "completed", "b": "completed", "c": "excluded", "d": "excluded"}
    assert final["status"] == "completed"


def test_a_worker_killed_under_a_node_retries_it_and_the_pipeline_goes_on(srv: Server):
    import os
    import signal

    started = run(srv, "resilient")
    slow = started["nodes"]["slow"]["task_id"]
    victim = on_a_worker(srv, slow)["worker"]["pid"]  # celery: a pool process of the worker host
    os.kill(victim, signal.SIGKILL)
    final = srv.wait_for(started["task_id"], timeout=60)
    srv.wait_workers()
    assert final["status"] == "completed", final
    child = srv.status(slow)
    assert child["attempt"] == 2 and child["attempts"][0]["error"]["type"] == "WorkerLost"
    assert child["worker"]["pid"] != victim
    after = nodes_of(final)["after"]["task_id"]
    runs = [t for t in srv.client.get("/tasks", params={"step": "diag_noop", "limit": 500}).json()["tasks"]
            if t.get("parent_id") == started["task_id"]]
    assert [t["task_id"] for t in runs] == [after], "no node ran twice"


def test_a_restart_in_the_middle_of_a_pipeline_loses_nothing(make_any_server, tmp_path: Path):
    storage = tmp_path / "task_storage"
    srv: Server = make_any_server(storage=storage, pipelines_dir=PIPELINES)
    started = run(srv, "restartable")
    first = started["nodes"]["first"]["task_id"]
    on_a_worker(srv, first)
    srv.stop()  # SIGTERM: the workers stop their steps and shut down
    srv.start()
    final = srv.wait_for(started["task_id"], timeout=60)
    assert final["status"] == "completed", final
    node = nodes_of(final)["first"]
    assert node["interrupted"] >= 1 and node["interrupted_tasks"][0] == first and node["task_id"] != first
    assert {srv.status(t)["status"] for t in node["interrupted_tasks"]} == {"stopped"}
    assert srv.status(node["task_id"])["status"] == "completed"
    assert srv.status(nodes_of(final)["then"]["task_id"])["output"] == {"after": "first"}
