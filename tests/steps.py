"""Running registered steps in-process, as a task's thread would (the `dirs` fixture gives them private folders)."""

from __future__ import annotations

from typing import Any

from etl import registry
from tests.server import ROOT

SAMPLES = ROOT / "etl" / "samples"


def run(step_name: str, **params: Any) -> dict[str, Any]:
    step = registry.get_step(step_name, include_diagnostic=False)
    return step.run(step.params_model.model_validate(params))
