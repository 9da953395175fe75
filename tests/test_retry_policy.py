"""Retry policies in process: backoff with jitter, error classes, next business day."""

from __future__ import annotations

import datetime as dt
import random

import pytest
from zoneinfo import ZoneInfo

from api.orchestration.retries import RetryPolicy, decide
from api.task import Task, TaskStatus, mask_pipeline, now_iso


def task(attempt: int, **policy) -> Task:
    return Task(task_id="t", step_name="s", status=TaskStatus.RUNNING, created_at=now_iso(), attempt=attempt,
                retry=RetryPolicy(**policy).model_dump())


def test_backoff_grows_exponentially_within_its_jitter_and_cap():
    policy = RetryPolicy(backoff_seconds=10, backoff_factor=3, jitter=0.2, max_backoff_seconds=60)
    rng = random.Random(7)
    for attempt, base in ((1, 10), (2, 30), (3, 60), (4, 60)):
        waits = [policy.delay(attempt, rng) for _ in range(200)]
        assert base * 0.8 <= min(waits) and max(waits) <= base * 1.2
        assert max(waits) - min(waits) > base * 0.2, "jitter spreads the retries"


def test_only_named_errors_are_retried_and_only_while_attempts_remain():
    assert decide(task(1, max_attempts=3), {"type": "ConnectionError"}) is not None
    assert decide(task(1, max_attempts=3), {"type": "WorkerLost"}) is not None
    assert decide(task(1, max_attempts=3), {"type": "ValueError"}) is None, "a data error is never retried"
    assert decide(task(1, max_attempts=3), {"type": "ValidationError"}) is None
    assert decide(task(3, max_attempts=3), {"type": "ConnectionError"}) is None, "the last attempt failed"
    assert decide(task(1, max_attempts=3, retry_on=["ValueError"]), {"type": "ValueError"}) is not None
    no_policy = Task(task_id="t", step_name="s", status=TaskStatus.RUNNING, created_at=now_iso())
    assert decide(no_policy, {"type": "ConnectionError"}) is None


def test_defer_to_the_next_business_day():
    policy = RetryPolicy(next_business_day_at="07:00")
    zone = ZoneInfo("America/Sao_Paulo")
    friday_before_carnival = dt.datetime(2026, 2, 13, 18, 0, tzinfo=zone).timestamp()
    wait = policy.seconds_to_next_business_day(friday_before_carnival)
    assert dt.datetime.fromtimestamp(friday_before_carnival + wait, zone) == dt.datetime(2026, 2, 18, 7, 0, tzinfo=zone)


def test_secret_run_parameters_are_masked_but_node_names_kept():
    pipeline = {"run_parameters": {"password": "x", "date": "2026-02-18"},
                "nodes": {"token_refresh": {"state": "pending"}},
                "definition": {"parameters": {"password": None}, "nodes": {"token_refresh": {"params": {"api_key": "k"}}}}}
    masked = mask_pipeline(pipeline)
    assert masked["run_parameters"] == {"password": "***", "date": "2026-02-18"}
    assert masked["nodes"] == {"token_refresh": {"state": "pending"}}
    assert masked["definition"]["nodes"]["token_refresh"]["params"] == {"api_key": "***"}
    assert pipeline["run_parameters"]["password"] == "x", "the record itself is unchanged"


def test_a_policy_may_name_a_base_class_of_the_error():
    error = {"type": "QuotaExceeded", "kinds": ["QuotaExceeded", "TransientError", "EtlError"]}
    assert decide(task(1, max_attempts=2), error) is not None, "TransientError is in the default list"
    assert decide(task(1, max_attempts=2, retry_on=["PortalUnavailable"]), error) is None


def test_a_policy_with_an_unknown_time_zone_is_refused_when_it_is_read():
    """Before: it passed validation and raised inside finish(), leaving the task running."""
    import pydantic

    from api.orchestration.retries import RetryPolicy

    with pytest.raises(pydantic.ValidationError, match="unknown time zone"):
        RetryPolicy(next_business_day_at="07:00", timezone="Nowhere/Atlantis")
