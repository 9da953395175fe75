"""Schedules: business-day rules on the ANBIMA calendar (in process), and firing exactly once across
real Gunicorn workers, also when the firing worker is killed or the service was down."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from zoneinfo import ZoneInfo

import httpx
import pytest

from api.orchestration.schedules import nth_business_day, occurrences
from api.store import TaskStore
from api.task import Task, TaskStatus, new_task_id, now_iso
from tests.conftest import BACKENDS
from tests.server import Server

SP = ZoneInfo("America/Sao_Paulo")


def at(*args: int) -> float:
    return dt.datetime(*args, tzinfo=SP).timestamp()


def days(record: dict, after: float, n: int) -> list[str]:
    return [m.strftime("%a %d/%m %H:%M") for m in occurrences(record, after, n)]


def test_business_days_skip_carnival_and_20_november():
    record = {"cron": "0 7 * * *", "timezone": "America/Sao_Paulo",
              "business_days": {"rule": "business_days", "holiday": "skip"}}
    # Friday 13/02/2026 after 07:00: the weekend and Carnival (16 and 17/02) are skipped
    assert days(record, at(2026, 2, 13, 8), 3) == ["Wed 18/02 07:00", "Thu 19/02 07:00", "Fri 20/02 07:00"]
    # 20/11/2026 (Consciência Negra, a national holiday since 2024) is a Friday
    assert days(record, at(2026, 11, 19, 8), 2) == ["Mon 23/11 07:00", "Tue 24/11 07:00"]
    first = occurrences(record, at(2026, 2, 13, 8))[0]
    assert first.utcoffset() == dt.timedelta(hours=-3) and first.astimezone(dt.UTC).hour == 10


def test_a_holiday_rolls_forward_to_the_next_business_day():
    mondays = {"cron": "0 7 * * 1", "timezone": "America/Sao_Paulo",
               "business_days": {"rule": "business_days", "holiday": "roll_forward"}}
    # Carnival Monday 16/02 runs on Wednesday 18/02 (Tuesday is Carnival too), then Mondays again
    assert days(mondays, at(2026, 2, 10), 3) == ["Wed 18/02 07:00", "Mon 23/02 07:00", "Mon 02/03 07:00"]
    fridays = {**mondays, "cron": "30 6 * * 5"}
    assert days(fridays, at(2026, 11, 16), 2) == ["Mon 23/11 06:30", "Fri 27/11 06:30"]


def test_nth_business_day_of_the_month():
    first = {"cron": "0 9 * * *", "timezone": "America/Sao_Paulo",
             "business_days": {"rule": "nth_business_day", "n": 1}}
    assert days(first, at(2026, 10, 15), 3) == ["Tue 03/11 09:00", "Tue 01/12 09:00", "Mon 04/01 09:00"]
    last = {**first, "business_days": {"rule": "nth_business_day", "n": -1}}
    assert days(last, at(2026, 2, 1), 2) == ["Fri 27/02 09:00", "Tue 31/03 09:00"]
    # 5th business day of February 2026: 2, 3, 4, 5, 6 (Carnival is the week after)
    assert nth_business_day(2026, 2, 5) == dt.date(2026, 2, 6) and nth_business_day(2026, 2, 13) == dt.date(2026, 2, 20)


def test_a_cron_that_can_never_fire_on_business_days_has_no_occurrence():
    saturdays = {"cron": "0 7 * * 6", "timezone": "UTC", "business_days": {"rule": "business_days"}}
    assert occurrences(saturdays, time.time()) == []
    every_second = {"cron": "* * * * * *", "timezone": "UTC", "business_days": {"rule": "business_days"}}
    assert len(occurrences(every_second, at(2026, 2, 13, 23, 59, 58), 3)) == 3  # jumps over the weekend quickly


@pytest.fixture(params=BACKENDS)
def any_store(request: pytest.FixtureRequest, tmp_path) -> Iterator:
    """The local store, or the Redis store on a real redis-server: the same verbs."""
    if request.param == "local":
        store = TaskStore(tmp_path / "st", tmp_path / "st" / "runs", tmp_path / "st" / "outputs", ttl_seconds=3600,
                          max_running=2, max_queued=3, worker_lost_after_seconds=3)
        store.open()
        yield store
        store.close()
        return
    from api.store.redis import RedisStore
    from tests.scaleout import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    store = RedisStore(server.url, tmp_path / "st", tmp_path / "st" / "runs", tmp_path / "st" / "outputs",
                       ttl_seconds=3600, max_running=2, max_queued=3, worker_lost_after_seconds=3, lease_seconds=2)
    try:
        store.open()
        store.seed_shared_settings()
        store.dispatch = lambda task_id, token: None  # no worker host here: the task stays dispatched
        yield store
    finally:
        store.close()
        server.stop()


def test_firing_the_same_occurrence_twice_is_the_same_task(any_store: TaskStore):
    from api.workers import WorkerInfo

    store = any_store

    worker = WorkerInfo.this_process()
    store.heartbeat(worker)
    made = []

    def launch() -> Task:
        task = Task(task_id=new_task_id(), step_name="diag_noop", status=TaskStatus.QUEUED, created_at=now_iso())
        made.append(store.submit(task, worker, None)[0])
        return made[-1]

    store.put_schedule({"id": "s", "cron": "* * * * *"}, create=True)
    first = store.fire_occurrence("s", "2026-02-18T07:00:00-03:00", None, launch)
    again = store.fire_occurrence("s", "2026-02-18T07:00:00-03:00", None, launch)
    assert first == (made[0].task_id, True) and again == (made[0].task_id, False) and len(made) == 1
    assert store.get_schedule("s")["fired_count"] == 1


# --- against real workers ------------------------------------------------------------------


def schedule(srv: Server, **spec) -> dict:
    response = srv.client.post("/schedules", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def fired_tasks(srv: Server, schedule_id: str) -> list[dict]:
    runs = srv.client.get(f"/schedules/{schedule_id}/runs").json()["runs"]
    return [srv.status(run["task_id"]) for run in runs]


def test_crud_pause_resume_and_bad_input(make_any_server):
    server: Server = make_any_server(anonymous_role="admin")
    created = schedule(server, id="daily-noop", step="diag_noop", cron="0 7 * * *",
                       business_days={"rule": "business_days", "holiday": "skip"})
    assert created["timezone"] == "America/Sao_Paulo" and len(created["next_runs"]) == 5
    from etl import calendar

    for run in created["next_runs"]:
        moment = dt.datetime.fromisoformat(run)
        assert moment.hour == 7 and moment.utcoffset() == dt.timedelta(hours=-3)
        assert calendar.is_business_day(moment.date())
    assert server.client.post("/schedules", json={"id": "daily-noop", "step": "diag_noop",
                                                  "cron": "0 7 * * *"}).status_code == 409
    paused = server.client.post("/schedules/daily-noop/pause").json()
    assert paused["paused"] and paused["next_runs"] == []
    resumed = server.client.post("/schedules/daily-noop/resume").json()
    assert not resumed["paused"] and resumed["next_runs"] == created["next_runs"]
    listed = server.client.get("/schedules").json()
    assert "daily-noop" in {s["id"] for s in listed["schedules"]}

    def refused(spec: dict, field: str) -> str:
        response = server.client.post("/schedules", json={"id": "bad", **spec})
        assert response.status_code == 422, response.text
        assert any(field in ".".join(map(str, e.get("loc", []))) or e.get("field") == field
                   for e in response.json()["errors"]), response.json()
        return response.json()["detail"]

    assert "cron" in refused({"step": "diag_noop", "cron": "61 * * * *"}, "cron")
    assert "never fires" in refused({"step": "diag_noop", "cron": "0 7 * * 6",
                                     "business_days": {"rule": "business_days"}}, "cron")
    refused({"step": "diag_nope", "cron": "0 7 * * *"}, "step")
    refused({"step": "diag_sleep", "cron": "0 7 * * *", "parameters": {"seconds": "x"}}, "parameters.seconds")
    refused({"step": "diag_noop", "cron": "0 7 * * *", "timezone": "Mars/Base"}, "timezone")
    assert server.client.delete("/schedules/daily-noop").status_code == 204
    assert server.client.get("/schedules/daily-noop").status_code == 404


def test_each_occurrence_fires_exactly_once_across_workers_and_after_the_firing_worker_is_killed(make_any_server):
    srv: Server = make_any_server(anonymous_role="admin")
    schedule(srv, id="every-second", step="diag_noop", cron="* * * * * *", parameters={"hello": "schedule"})
    time.sleep(4)
    owner = srv.client.get("/schedules/every-second").json()["lease"]["owner"]
    victim = int(owner.split(":")[-2])
    os.kill(victim, signal.SIGKILL)
    # Until another worker holds the lease (the killed one's lapses within 5 s) and has caught up
    # on the occurrences missed meanwhile.
    deadline = time.monotonic() + 30
    record: dict = {}
    while True:
        try:
            record = srv.client.get("/schedules/every-second").json()
        except httpx.TransportError:  # the kept-alive connection was the killed worker's
            pass
        else:
            after = (record.get("lease") or {}).get("owner")
            if after not in (None, owner) and record["fired_count"] >= 9:
                break
        assert time.monotonic() < deadline, f"no other worker took over firing: {record}"
        time.sleep(0.1)
    srv.wait_workers()
    after = srv.client.get("/schedules/every-second").json()["lease"]["owner"]
    assert after != owner, "another worker took over firing"
    time.sleep(2)
    srv.client.post("/schedules/every-second/pause")
    time.sleep(0.5)
    tasks = fired_tasks(srv, "every-second")
    occurrences_fired = [t["schedule"]["occurrence"] for t in tasks]
    assert max(Counter(occurrences_fired).values()) == 1, "no occurrence fired twice"
    moments = sorted(dt.datetime.fromisoformat(o) for o in occurrences_fired)
    gaps = [(b - a).total_seconds() for a, b in zip(moments, moments[1:])]
    assert len(moments) >= 10 and set(gaps) == {1.0}, f"every second fired once, none lost: {gaps}"
    assert {t["status"] for t in tasks} == {"completed"} and tasks[0]["output"] == {"hello": "schedule"}
    firers = {t["schedule"]["fired_by"] for t in tasks}
    assert owner in firers and after in firers
    record = srv.client.get("/schedules/every-second").json()
    assert record["fired_count"] == len(tasks)
    late = sorted(t["schedule"]["late_seconds"] for t in tasks if t["schedule"]["fired_by"] == after)
    assert late[0] < 1.0, "the new firer catches up, then fires on time"


def test_missed_runs_after_downtime_follow_the_policy(make_any_server, tmp_path):
    storage = tmp_path / "task_storage"
    srv: Server = make_any_server(storage=storage, schedule_missed_after_seconds=2, anonymous_role="admin")
    # The occurrence falls after the stop below: well past its few seconds (Gunicorn alone stops in
    # under one, with a worker host and Redis in a few).
    lead = 6 if srv.backend == "local" else 12
    occurrence = dt.datetime.fromtimestamp(int(time.time()) + lead, dt.UTC)
    cron = f"{occurrence.second} {occurrence.minute} {occurrence.hour} * * *"  # once a day, while the service is down
    schedule(srv, id="skipper", step="diag_noop", cron=cron, timezone="UTC", missed="skip")
    schedule(srv, id="catch-up", step="diag_noop", cron=cron, timezone="UTC", missed="run_once")
    srv.stop()
    assert time.time() < occurrence.timestamp() - 1, "the service stopped before the occurrence"
    time.sleep(max(0.0, occurrence.timestamp() + 4 - time.time()))
    srv.start()
    deadline = time.monotonic() + 15
    while not srv.client.get("/schedules/catch-up/runs").json()["runs"] and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)
    caught = fired_tasks(srv, "catch-up")
    assert len(caught) == 1, "run_once: the missed occurrence runs once on start"
    assert caught[0]["schedule"]["occurrence"] == occurrence.isoformat(timespec="seconds")
    assert caught[0]["schedule"]["late_seconds"] > 4
    assert fired_tasks(srv, "skipper") == [], "skip: the missed occurrence is not run"
    skipper = srv.client.get("/schedules/skipper").json()
    assert skipper["missed_count"] == 1 and skipper["last_missed"]["occurrences"] == [caught[0]["schedule"]["occurrence"]]
    tomorrow = (occurrence + dt.timedelta(days=1)).isoformat(timespec="seconds")
    assert skipper["next_runs"][0] == tomorrow and srv.client.get("/schedules/catch-up").json()["next_runs"][0] == tomorrow


def test_a_schedule_runs_a_pipeline(make_any_server):
    from tests.test_pipelines import PIPELINES

    srv: Server = make_any_server(pipelines_dir=PIPELINES, anonymous_role="admin")
    schedule(srv, id="diamond-now", pipeline="diamond", cron="* * * * * *", parameters={"seconds": 0.1})
    deadline = time.monotonic() + 20
    while not srv.client.get("/schedules/diamond-now/runs").json()["runs"] and time.monotonic() < deadline:
        time.sleep(0.1)
    srv.client.post("/schedules/diamond-now/pause")
    run = srv.client.get("/schedules/diamond-now/runs").json()["runs"][-1]
    final = srv.wait_for(run["task_id"], timeout=30)
    assert final["status"] == "completed" and final["schedule"]["schedule_id"] == "diamond-now"
    assert final["requested_by"] == {"role": "schedule", "name": "diamond-now"}


def test_schedules_and_fired_occurrences_survive_a_lost_cache(tmp_path):
    import shutil

    from api.workers import WorkerInfo

    def open_store() -> TaskStore:
        store = TaskStore(tmp_path / "st", tmp_path / "st" / "runs", tmp_path / "st" / "outputs", ttl_seconds=3600,
                          max_running=2, max_queued=3, worker_lost_after_seconds=3)
        store.open()
        return store

    worker = WorkerInfo.this_process()
    store = open_store()
    store.heartbeat(worker)
    store.put_schedule({"id": "kept", "cron": "0 7 * * *", "timezone": "America/Sao_Paulo"}, create=True)
    occurrence = "2026-02-18T07:00:00-03:00"

    def launch() -> Task:
        task = Task(task_id=new_task_id(), step_name="diag_noop", status=TaskStatus.QUEUED, created_at=now_iso(),
                    schedule={"schedule_id": "kept", "occurrence": occurrence})
        return store.submit(task, worker, None)[0]

    task_id, fired = store.fire_occurrence("kept", occurrence, None, launch)
    assert fired
    store.close()
    shutil.rmtree(tmp_path / "st" / "task_cache")
    store = open_store()
    store.rebuild()
    assert store.get_schedule("kept")["fired_count"] == 1
    assert store.fire_occurrence("kept", occurrence, None, launch) == (task_id, False), "not fired again"
    store.close()


def test_a_singleton_step_skips_the_occurrences_that_find_it_still_running(make_any_server, tmp_path):
    policies = tmp_path / "policies.json"
    policies.write_text('{"diag_flaky": {"concurrency": {"key": "nightly:{lock}", "mode": "singleton"}}}',
                        encoding="utf-8")
    srv: Server = make_any_server(step_policies_file=policies, anonymous_role="admin")
    schedule(srv, id="overlapping", step="diag_flaky", cron="* * * * * *",
             parameters={"key": "overlap", "failures": 0, "seconds": 2.5, "lock": "x"})
    # Until two runs were fired and occurrences found the first still running (about 4 s).
    deadline = time.monotonic() + 30
    while True:
        record = srv.client.get("/schedules/overlapping").json()
        if record.get("fired_count", 0) >= 2 and record.get("skipped_count", 0) >= 2:
            break
        assert time.monotonic() < deadline, record
        time.sleep(0.1)
    srv.client.post("/schedules/overlapping/pause")
    record = srv.client.get("/schedules/overlapping").json()
    tasks = [srv.wait_for(t["task_id"], timeout=30) for t in fired_tasks(srv, "overlapping")]
    assert 1 <= len(tasks) <= 3 and record["skipped_count"] >= 2
    assert "nightly:x" in record["last_skipped"]["reason"]
    ordered = sorted(tasks, key=lambda t: t["started_at"])
    for a, b in zip(ordered, ordered[1:]):
        assert a["completed_at"] <= b["started_at"], "never two at once"
