"""Running a task's step in the current thread and turning how it ended into the task's outcome.

Shared by the local runner's task threads (runner.py) and the scale-out worker hosts (celery_worker.py).
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from api.task import Task, TaskStatus
from etl import registry, runtime, secrets
from etl.errors import StepStopped

logger = logging.getLogger(__name__)


def execute_step(task: Task, context: runtime.TaskContext, timeout_seconds: float, host: str,
                 worker_id: str = "") -> tuple[TaskStatus, str, Any, dict[str, Any] | None]:
    """Run the task's step in this thread, bound to ``context``: (status, reason, result, error).

    The one place that turns a step's return or exception into a task outcome, for the local
    runner's threads and the scale-out worker hosts alike. ``host`` names what may shut down.
    """
    status, reason, result, error = TaskStatus.FAILED, "", None, None
    with runtime.bind(context):
        logger.info("task %s: step %s started on %s", task.task_id, task.step_name, worker_id)
        try:
            step = registry.get_step(task.step_name, include_diagnostic=True)
            # ${secret:name} references are resolved here, in the task's thread, never stored: only in
            # fields declared to carry them, after validation, so no validation error can quote a secret.
            params = secrets.resolve_declared(step.params_model.model_validate(task.params))
            result = step.run(params)
            status, reason = TaskStatus.COMPLETED, "the step finished"
        except StepStopped as exc:
            if context.stop_reason == "timeout":
                reason = f"the step ran longer than {timeout_seconds:g} s"
                error = {"type": "Timeout", "message": reason, "traceback": None}
            elif context.stop_reason == "shutdown":
                status, reason = TaskStatus.STOPPED, f"stopped because the {host} shut down"
            elif context.stop_reason == "lost":
                # Fenced: the store refuses this end, the verdict of the worker that declared us lost stands.
                logger.warning("task %s: no longer owned by this worker; the step stopped at a checkpoint",
                               task.task_id)
                status, reason = TaskStatus.STOPPED, "this worker no longer owns the task"
            else:
                status, reason = TaskStatus.STOPPED, f"stopped on request ({exc})"
        except Exception as exc:
            reason = f"the step raised {type(exc).__name__}"
            error = {"type": type(exc).__name__, "message": secrets.mask_text(str(exc)),
                     "traceback": secrets.mask_text(traceback.format_exc()),
                     # the class and its bases: a retry policy may name a base (TransientError)
                     "kinds": [c.__name__ for c in type(exc).__mro__ if c not in (object, BaseException, Exception)]}
            logger.error("task %s: %s: %s", task.task_id, type(exc).__name__, error["message"])
        logger.info("task %s: %s", task.task_id, status.value)
    return status, reason, result, error
