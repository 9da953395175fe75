"""The one admission rule: whether a task starts now, waits in the queue, or is refused."""

from __future__ import annotations

from enum import Enum


class Admission(str, Enum):
    RUN = "run"
    QUEUE = "queue"
    FULL = "full"


def admit(*, ahead: int, running: int, max_running: int, max_queued: int, accepted: bool = False,
          key_free: bool = True, starts_here: bool = True) -> Admission:
    """``ahead`` tasks wait before this one and ``running`` hold slots (live owners only).

    A task starts only when nobody waits before it (FIFO) and a slot is free under the global
    cap; otherwise it waits, unless ``max_queued`` tasks already wait. A queued task that reaches
    the head of the queue is asked again with ``ahead=0``. ``accepted``: the work was admitted
    already (a node of a running pipeline, a retry): it may wait but is never refused.
    ``key_free``: the task's concurrency key (if any) is below its limit; a busy key makes it wait
    in the queue without a slot, and the claim skips it (keeping its place) until the key frees.
    ``starts_here``: the asking worker can start it (one that is shutting down queues it for the others).
    """
    if ahead == 0 and running < max_running and key_free and starts_here:
        return Admission.RUN
    if ahead < max_queued or accepted:
        return Admission.QUEUE
    return Admission.FULL
