"""The one admission rule: whether a task starts now, waits in the queue, or is refused."""

from __future__ import annotations

from enum import Enum


class Admission(str, Enum):
    RUN = "run"
    QUEUE = "queue"
    FULL = "full"


def admit(*, ahead: int, running: int, max_running: int, max_queued: int) -> Admission:
    """``ahead`` tasks wait before this one and ``running`` hold slots (live owners only).

    A task starts only when nobody waits before it (FIFO) and a slot is free under the global
    cap; otherwise it waits, unless ``max_queued`` tasks already wait. A queued task that reaches
    the head of the queue is asked again with ``ahead=0``.
    """
    if ahead == 0 and running < max_running:
        return Admission.RUN
    if ahead < max_queued:
        return Admission.QUEUE
    return Admission.FULL
