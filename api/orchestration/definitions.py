"""Pipeline definitions: JSON files of named nodes (steps with parameters) and their dependencies.

A file ``<name>.json`` in ETL_PIPELINES_DIR holds one definition. Node parameters may use
``${run.<name>}`` (a run parameter), ``${dirs.input|output|work}`` (the service's folders) and
``${nodes.<node>.<key>}`` (a key of the result of a node this one depends on). A value that is
only a reference keeps the referenced value's type; inside longer text it is formatted in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.orchestration.policies import Concurrency
from api.orchestration.retries import RetryPolicy
from etl import registry
from etl.errors import UnknownStep

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: str = Field(description="The step this node runs (GET /steps).")
    params: dict[str, Any] = Field(default_factory=dict, description="The step's parameters; may use ${...} references.")
    depends_on: list[str] = Field(default_factory=list, description="Nodes that must complete before this one starts.")
    custom_params: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, description="Names a run can select the node by (e.g. the system).")
    retry: RetryPolicy | None = Field(None, description="Retry policy of this node's task (default: its step's).")
    concurrency: Concurrency | None = Field(None, description="Concurrency key of this node's task (default: its step's).")


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN)
    version: int = Field(1, ge=1)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict, description="Run parameters and their defaults.")
    nodes: dict[str, NodeSpec] = Field(min_length=1)


class DefinitionError(Exception):
    """A pipeline definition cannot be used; ``errors`` name the node and field of each problem."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


def _problem(field: str, msg: str, node: str | None = None) -> dict[str, Any]:
    return {"node": node, "field": field, "msg": msg}


def parse(data: Any, expected_name: str | None = None) -> PipelineSpec:
    """A definition from JSON data (DefinitionError naming the fields)."""
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        errors = []
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            node = loc[1] if len(loc) > 1 and loc[0] == "nodes" else None
            errors.append(_problem(".".join(loc) or "definition", error["msg"], node))
        raise DefinitionError(describe(errors), errors) from None
    if expected_name is not None and spec.name != expected_name:
        raise DefinitionError(f"the file {expected_name}.json defines pipeline {spec.name!r}; name the file after it",
                              [_problem("name", f"must be {expected_name!r} (the file name)")])
    return spec


def describe(errors: list[dict[str, Any]]) -> str:
    return "; ".join((f"node {e['node']}: " if e["node"] else "") + f"{e['field']}: {e['msg']}" for e in errors)


def references(value: Any) -> list[str]:
    if isinstance(value, str):
        return REFERENCE.findall(value)
    if isinstance(value, dict):
        return [r for v in value.values() for r in references(v)]
    if isinstance(value, list):
        return [r for v in value for r in references(v)]
    return []


class Unresolved(Exception):
    """A reference has no value (yet)."""


def lookup(path: str, context: dict[str, Any]) -> Any:
    value: Any = context
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            raise Unresolved(f"${{{path}}} has no value")
    return value


def substitute(value: Any, context: dict[str, Any]) -> Any:
    """``value`` with every ${...} reference replaced from ``context`` (Unresolved if one has no value)."""
    if isinstance(value, str):
        whole = REFERENCE.fullmatch(value)
        if whole:
            return lookup(whole.group(1), context)
        return REFERENCE.sub(lambda m: str(lookup(m.group(1), context)), value)
    if isinstance(value, dict):
        return {k: substitute(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, context) for v in value]
    return value


def order(spec: PipelineSpec) -> list[str]:
    """Node names with every node after its dependencies (DefinitionError naming a cycle)."""
    done: list[str] = []
    state: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = path[path.index(name):] + [name]
            raise DefinitionError(f"the dependencies form a cycle: {' -> '.join(cycle)}",
                                  [_problem(f"nodes.{name}.depends_on", f"cycle {' -> '.join(cycle)}", name)])
        state[name] = "visiting"
        for dep in spec.nodes[name].depends_on:
            visit(dep, path + [name])
        state[name] = "done"
        done.append(name)

    for name in spec.nodes:
        visit(name, [])
    return done


def ancestors(spec: PipelineSpec | dict[str, Any], name: str) -> set[str]:
    """Every node ``name`` depends on, directly or through others."""
    nodes = spec.nodes if isinstance(spec, PipelineSpec) else spec
    found: set[str] = set()
    todo = list(_deps(nodes[name]))
    while todo:
        dep = todo.pop()
        if dep not in found and dep in nodes:
            found.add(dep)
            todo += _deps(nodes[dep])
    return found


def _deps(node: NodeSpec | dict[str, Any]) -> list[str]:
    return node.depends_on if isinstance(node, NodeSpec) else node["depends_on"]


def check_node_params(name: str, node: NodeSpec, step: registry.Step, context: dict[str, Any]) -> list[dict[str, Any]]:
    """Problems with a node's parameters once the references known now are filled in (node
    outputs are not known before the run: fields that use them are checked when the node starts)."""
    params: dict[str, Any] = {}
    later: set[str] = set()
    problems = []
    for key, value in node.params.items():
        if any(ref.startswith("nodes.") for ref in references(value)):
            later.add(key)
            continue
        try:
            params[key] = substitute(value, context)
        except Unresolved as exc:
            problems.append(_problem(f"nodes.{name}.params.{key}", str(exc), name))
    try:
        step.params_model.model_validate(params)
    except ValidationError as exc:
        for error in exc.errors():
            loc = [str(p) for p in error["loc"]]
            if error["type"] == "missing" and loc and loc[0] in later:
                continue
            problems.append(_problem(".".join([f"nodes.{name}.params", *loc]), error["msg"], name))
    return problems


def validate(spec: PipelineSpec, diagnostic: bool, dirs: dict[str, str],
             run_parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every problem of the definition (empty when it can run), each naming its node and field."""
    problems = []
    for name, node in spec.nodes.items():
        if not re.fullmatch(NAME_PATTERN, name):
            problems.append(_problem(f"nodes.{name}", "a node name is a letter then letters, digits, _ or -", name))
        for dep in node.depends_on:
            if dep not in spec.nodes:
                problems.append(_problem(f"nodes.{name}.depends_on", f"depends on {dep!r}, which is not a node", name))
            elif dep == name:
                problems.append(_problem(f"nodes.{name}.depends_on", "a node cannot depend on itself", name))
    if problems:
        return problems
    try:
        order(spec)
    except DefinitionError as exc:
        return exc.errors
    context = {"run": {**spec.parameters, **(run_parameters or {})}, "dirs": dirs}
    for name, node in spec.nodes.items():
        for ref in references(node.params):
            head, _, rest = ref.partition(".")
            if head == "nodes":
                target = rest.split(".", 1)[0]
                if target not in ancestors(spec, name):
                    problems.append(_problem(f"nodes.{name}.params", f"${{{ref}}} names node {target!r}, "
                                             "which this node does not depend on", name))
            elif head == "run" and rest.split(".", 1)[0] not in context["run"]:
                problems.append(_problem(f"nodes.{name}.params", f"${{{ref}}}: {rest!r} is not a run parameter "
                                         "(declare it under 'parameters')", name))
            elif head not in ("run", "dirs", "nodes"):
                problems.append(_problem(f"nodes.{name}.params", f"${{{ref}}}: references start with run., dirs. "
                                         "or nodes.", name))
        try:
            step = registry.get_step(node.step, include_diagnostic=diagnostic)
        except UnknownStep as exc:
            problems.append(_problem(f"nodes.{name}.step", str(exc), name))
            continue
        problems += check_node_params(name, node, step, context)
    return problems


def load_folder(folder: Path) -> dict[str, tuple[PipelineSpec | None, list[dict[str, Any]], float]]:
    """Every ``*.json`` definition in ``folder``: name -> (spec or None, parse problems, mtime)."""
    found: dict[str, tuple[PipelineSpec | None, list[dict[str, Any]], float]] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        name = path.stem
        try:
            mtime = path.stat().st_mtime
            spec = parse(json.loads(path.read_text(encoding="utf-8")), expected_name=name)
            found[name] = (spec, [], mtime)
        except (OSError, ValueError) as exc:
            found[name] = (None, [_problem("file", f"{path.name} is not valid JSON: {exc}")], 0.0)
        except DefinitionError as exc:
            found[name] = (None, exc.errors, 0.0)
    return found
