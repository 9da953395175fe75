"""Retries, dead letters, concurrency keys and "why waiting", against a real 4-worker Gunicorn."""

from __future__ import annotations

import time


from api.task import parse_iso
from tests.scaleout import backend_server
from tests.server import ROOT, Server

POLICIES = ROOT / "tests" / "step_policies.json"


# Retries, dead letters and keys behave the same in both modes (celery: Redis admission, worker host).
srv = backend_server(step_policies_file=POLICIES, max_concurrent_tasks=4, anonymous_role="admin")


def unique(prefix: str) -> str:
    return f"{prefix}-{time.time_ns()}"


def test_transient_errors_are_retried_with_backoff_and_every_attempt_recorded(srv: Server):
    task = srv.run("diag_flaky", key=unique("conn"), failures=2, error="ConnectionError")
    seen_waiting = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = srv.status(task["task_id"])
        if state["status"] == "queued" and state.get("retry_due"):
            seen_waiting = state
            capacity = srv.client.get("/stats").json()["capacity"]
            assert capacity["running"] == 0, "a retry waiting for its time holds no slot"
            break
        time.sleep(0.02)
    assert seen_waiting is not None, "the task went back to queued to wait for its next attempt"
    assert seen_waiting["waiting"]["reason"] == "retry_backoff" and seen_waiting["attempt"] == 2
    final = srv.wait_for(task["task_id"], timeout=30)
    assert final["status"] == "completed" and final["attempt"] == 3 and final["output"] == {"calls": 3}
    attempts = final["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2]
    assert {a["error"]["type"] for a in attempts} == {"ConnectionError"}
    # backoff 0.6 s then 1.2 s (± 10 % jitter) between an attempt's end and the next one's start
    starts = [h["at"] for h in final["history"] if h["status"] == "running" and "worker" in h["reason"]]
    assert len(starts) == 3
    first_gap = parse_iso(starts[1]) - parse_iso(attempts[0]["ended_at"])
    second_gap = parse_iso(starts[2]) - parse_iso(attempts[1]["ended_at"])
    assert first_gap >= 0.54 and second_gap >= 1.08 and second_gap > first_gap, (first_gap, second_gap)
    assert "diag_flaky" in srv.client.get("/stats").json()["queue_wait_seconds"]["step"]


def test_a_data_error_is_never_retried_and_becomes_a_dead_letter_an_admin_can_dismiss(srv: Server):
    task = srv.run("diag_flaky", key=unique("data"), failures=5, error="ValueError")
    final = srv.wait_for(task["task_id"], timeout=20)
    assert final["status"] == "failed" and final["attempt"] == 1 and "attempts" not in final
    dead = {d["task_id"]: d for d in srv.client.get("/dead-letters").json()["dead_letters"]}
    assert dead[task["task_id"]]["error"]["type"] == "ValueError"
    response = srv.client.post(f"/dead-letters/{task['task_id']}/dismiss")
    assert response.status_code == 200, response.text
    assert task["task_id"] not in {d["task_id"] for d in srv.client.get("/dead-letters").json()["dead_letters"]}
    assert srv.status(task["task_id"])["status"] == "failed", "dismissing changes no state"
    assert srv.client.post(f"/dead-letters/{task['task_id']}/dismiss").status_code == 404


def test_a_dead_letter_after_the_last_attempt_is_requeued_as_a_new_attempt(srv: Server):
    key = unique("dead")
    task = srv.run("diag_flaky", key=key, failures=3, error="PortalUnavailable")
    final = srv.wait_for(task["task_id"], timeout=30)
    assert final["status"] == "failed" and final["attempt"] == 3 and len(final["attempts"]) == 2
    dead = {d["task_id"]: d for d in srv.client.get("/dead-letters").json()["dead_letters"]}
    assert dead[task["task_id"]]["error"]["type"] == "PortalUnavailable"
    assert len(dead[task["task_id"]]["attempts"]) == 2
    response = srv.client.post(f"/retry/{task['task_id']}")
    assert response.status_code == 202, response.text
    again = srv.wait_for(response.json()["task_id"], timeout=20)
    assert again["status"] == "completed" and again["attempt"] == 4 and again["retry_of"] == task["task_id"]
    assert [a["attempt"] for a in again["attempts"]] == [1, 2, 3]
    old = srv.status(task["task_id"])
    assert old["retried_as"]["task_id"] == again["task_id"] and old["retried_as"]["by"]["role"]
    assert task["task_id"] not in {d["task_id"] for d in srv.client.get("/dead-letters").json()["dead_letters"]}
    assert srv.client.post(f"/retry/{task['task_id']}").json()["task_id"] == again["task_id"], "same retry"
    audit = (srv.storage / "audit.log").read_text(encoding="utf-8")
    assert f'"new_task_id": "{again["task_id"]}"' in audit
    text = srv.task_file(again["task_id"])
    assert f'"retry_of": "{task["task_id"]}"' in text and '"attempts"' in text


def test_a_key_is_held_by_one_task_at_a_time_in_fifo_order_while_others_use_free_slots(srv: Server):
    lock = unique("db")
    keyed = [srv.run("diag_flaky", key=unique("k"), failures=0, seconds=1.0, lock=lock) for _ in range(3)]
    free = [srv.run("diag_sleep", seconds=0.3) for _ in range(2)]
    third = srv.status(keyed[2]["task_id"])
    assert third["status"] == "queued", third
    waiting = third["waiting"]
    assert waiting["reason"] == "concurrency_key" and waiting["key"] == f"lock:{lock}"
    assert waiting["blocked_by"] == [keyed[0]["task_id"]] and waiting["waiting_for_key_ahead"] == 1
    assert waiting["queue_position"] >= 1
    keys = srv.client.get("/keys").json()["keys"][f"lock:{lock}"]
    assert keys["holders"] == [keyed[0]["task_id"]]
    assert keys["waiting"] == [keyed[1]["task_id"], keyed[2]["task_id"]]
    finals = [srv.wait_for(t["task_id"], timeout=30) for t in keyed]
    others = [srv.wait_for(t["task_id"], timeout=30) for t in free]
    for a, b in zip(finals, finals[1:]):
        assert a["completed_at"] <= b["started_at"], "one holder at a time, in the order they were asked for"
    assert all(o["status"] == "completed" for o in others)
    assert max(o["completed_at"] for o in others) < finals[1]["started_at"], "tasks without the key did not wait"
    stats = srv.client.get("/stats").json()["queue_wait_seconds"]
    assert stats["key"][f"lock:{lock}"]["started"] == 3 and stats["key"][f"lock:{lock}"]["p50"] > 0


def test_a_key_limit_changes_without_a_restart(srv: Server):
    lock = unique("wide")
    assert srv.client.put(f"/keys/lock:{lock}", json={"limit": 2}).status_code == 200
    keyed = [srv.run("diag_flaky", key=unique("w"), failures=0, seconds=1.0, lock=lock) for _ in range(2)]
    finals = [srv.wait_for(t["task_id"], timeout=30) for t in keyed]
    assert finals[1]["started_at"] < finals[0]["completed_at"], "limit 2: both ran at once"


def test_why_a_task_waits_for_the_global_cap(srv: Server):
    holders = [srv.run("diag_sleep", seconds=1.5) for _ in range(4)]
    waiting = srv.run("diag_noop")
    state = srv.status(waiting["task_id"])
    assert state["status"] == "queued", state
    why = state["waiting"]
    assert why["reason"] == "global_cap" and why["max_concurrent_tasks"] == 4 and why["running"] == 4
    assert set(why["blocked_by"]) == {h["task_id"] for h in holders}
    assert why["queue_position"] == 1 and why["tasks_ahead"] == 0
    assert why["estimated_start"] is not None and "p50" in why["estimate_basis"]
    assert srv.wait_for(waiting["task_id"], timeout=30)["status"] == "completed"
    assert "waiting" not in srv.status(waiting["task_id"])


def test_singleton_refuses_a_second_identical_run_naming_the_first(make_any_server, tmp_path):
    policies = tmp_path / "policies.json"
    policies.write_text('{"diag_flaky": {"concurrency": {"key": "once:{lock}", "mode": "singleton"}}}', encoding="utf-8")
    srv = make_any_server(step_policies_file=policies, anonymous_role="admin")
    first = srv.run("diag_flaky", key="s1", failures=0, seconds=2, lock="nightly")
    second = srv.client.post("/run/diag_flaky", json={"parameters": {"key": "s2", "failures": 0, "lock": "nightly"}})
    assert second.status_code == 409, second.text
    assert second.json()["task_id"] == first["task_id"] and "once:nightly" in second.json()["detail"]
    assert srv.client.post("/run/diag_flaky", json={"parameters": {"key": "s3", "lock": "other"}}).status_code == 202
    srv.wait_for(first["task_id"], timeout=20)
    assert srv.client.post("/run/diag_flaky", json={"parameters": {"key": "s4", "lock": "nightly"}}).status_code == 202
