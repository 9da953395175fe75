"""How the client retries (backoff with jitter, Retry-After) and how often it polls."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

import httpx

TERMINAL = frozenset({"completed", "failed", "stopped"})
RETRY_STATUSES = frozenset({429, 502, 503, 504})
# The server caps ?wait= at 60 s; 25 s keeps each long-poll under common proxy idle timeouts.
LONG_POLL_SECONDS = 25.0
# A progress change also ends a long-poll; a step reporting progress ten times a second must not
# make the waiting client poll ten times a second.
MIN_POLL_INTERVAL_SECONDS = 0.2
# Log lines do not end a long-poll, so a follower looks for new lines at least this often.
FOLLOW_POLL_SECONDS = 1.0
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 10.0
SSE_READ_TIMEOUT_SECONDS = 90.0


def backoff(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with full jitter; never sooner than the server's Retry-After."""
    delay = random.uniform(BACKOFF_FIRST_SECONDS / 2, min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** attempt))
    if retry_after is not None:
        # A little jitter on top, so clients told the same Retry-After do not return together.
        delay = retry_after + random.uniform(0, min(1.0, retry_after / 10))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def json_body(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text.strip()[:500] or f"HTTP {response.status_code}"}
    return body if isinstance(body, dict) else {"value": body}


def time_left(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - time.monotonic()

