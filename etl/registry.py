"""The step catalogue: name -> function, parameter model, title and description."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from etl import secrets
from etl.errors import UnknownStep

# Modules whose import registers steps; etl.steps.diag holds the diagnostic ones.
STEP_MODULES = ("etl.steps.diag", "etl.steps.comp", "etl.steps.workflow", "etl.steps.tables",
                "etl.steps.fund_files", "etl.steps.operations", "etl.steps.portals", "etl.steps.backoffice",
                "etl.steps.portfolio_pdfs", "etl.steps.fidc_stock")


@dataclass(frozen=True)
class Step:
    name: str
    func: Callable[[Any], Any]
    params_model: type[BaseModel]
    title: str
    description: str
    diagnostic: bool = False

    def parameters_schema(self) -> dict[str, Any]:
        """The parameters' JSON schema; fields that may hold ``${secret:name}`` carry ``"x-secret": true``."""
        schema = self.params_model.model_json_schema()
        # SecretField marks the value's own schema; a top-level field is marked on its property too,
        # so a client need not look inside anyOf for optional ones.
        for path in secrets.secret_paths(self.params_model):
            if len(path) == 1 and path[0] in schema.get("properties", {}):
                schema["properties"][path[0]][secrets.SCHEMA_MARK] = True
        return schema

    def run(self, params: BaseModel) -> Any:
        return self.func(params)


_steps: dict[str, Step] = {}


def step(name: str, params: type[BaseModel], title: str, *, diagnostic: bool = False):
    """Register the decorated function as step ``name``; its docstring is the description."""

    def register(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        if name in _steps:
            raise ValueError(f"step {name!r} is registered twice")
        description = (func.__doc__ or "").strip()
        _steps[name] = Step(name, func, params, title, description, diagnostic)
        return func

    return register


_loaded = False


def load_steps() -> None:
    """Import every step module (once)."""
    global _loaded
    if not _loaded:
        for module in STEP_MODULES:
            importlib.import_module(module)
        _loaded = True


def available(include_diagnostic: bool) -> dict[str, Step]:
    load_steps()
    return {name: s for name, s in sorted(_steps.items()) if include_diagnostic or not s.diagnostic}


def get_step(name: str, include_diagnostic: bool) -> Step:
    """The step called ``name``; UnknownStep, naming close matches, if there is none."""
    load_steps()
    found = _steps.get(name)
    if found is not None and (include_diagnostic or not found.diagnostic):
        return found
    steps = available(include_diagnostic)
    close = difflib.get_close_matches(name, list(steps), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else " GET /steps lists the steps."
    raise UnknownStep(f"There is no step named {name!r}.{hint}")
