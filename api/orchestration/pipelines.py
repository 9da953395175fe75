"""Running pipelines: one pipeline task per run, one ordinary child task per node.

The pipeline task holds every node's state (``pipeline.nodes``); a node starts as a child task
once all its dependencies completed, and is ``skipped`` (with the reason) when one failed, was
skipped or stopped. Whichever worker sees a change advances the pipeline in one store
transaction (store.advance_pipeline), so a node is never submitted twice.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api.errors import InvalidParameters, NotFound, WrongState
from api.orchestration import definitions
from api.orchestration.definitions import (
    DefinitionError,
    NodeSpec,
    PipelineSpec,
    Unresolved,
)
from api.settings import Settings
from api.store.orchestration import PipelineStep
from api.task import Task, TaskStatus, new_task_id, now_iso
from etl import registry, secrets

logger = logging.getLogger(__name__)

PIPELINE_STEP_PREFIX = "pipeline:"
# Node states beyond the task states: pending (waits for its dependencies), skipped (a dependency
# failed), not_started (the pipeline was stopped first), excluded (not selected for this run).
ENDED = {"completed", "failed", "stopped", "skipped", "not_started", "excluded"}
BLOCKING = {"failed", "stopped", "skipped", "not_started"}
SUMMARY_STATES = ("pending", "queued", "running", "completed", "failed", "stopped", "skipped", "not_started", "excluded")


class InvalidPipeline(InvalidParameters):
    """The pipeline definition or the run's parameters cannot be used."""


def summary(nodes: dict[str, dict[str, Any]]) -> dict[str, int]:
    counts = dict.fromkeys(SUMMARY_STATES, 0)
    for node in nodes.values():
        counts[node["state"]] = counts.get(node["state"], 0) + 1
    return {"total": len(nodes), **counts, "succeeded": counts["completed"]}


class Pipelines:
    """This worker's view of the pipeline definitions, and the verbs that run them."""

    def __init__(self, store, runner, settings: Settings) -> None:
        self.store = store
        self.runner = runner
        self.settings = settings
        self.folder: Path = settings.pipelines_dir

    @property
    def dirs(self) -> dict[str, str]:
        s = self.settings
        return {"input": str(s.input_dir), "output": str(s.output_dir), "work": str(s.work_dir)}

    # --- definitions -----------------------------------------------------------------------

    def catalogue(self) -> list[dict[str, Any]]:
        """Every definition in the folder with its problems (read from disk: edits apply at once)."""
        rows = []
        for name, (spec, problems, _) in definitions.load_folder(self.folder).items():
            if spec is not None:
                problems = definitions.validate(spec, self.settings.diagnostic_steps, self.dirs)
            rows.append({"name": name, "version": spec.version if spec else None,
                         "description": spec.description if spec else "", "valid": not problems,
                         "problems": problems, "nodes": list(spec.nodes) if spec else []})
        return rows

    def load(self, name: str) -> PipelineSpec:
        if not _is_name(name):
            raise NotFound(f"There is no pipeline named {name!r}.")
        path = self.folder / f"{name}.json"
        if not path.is_file():
            known = ", ".join(definitions.load_folder(self.folder)) or "none"
            raise NotFound(f"There is no pipeline named {name!r} in {self.folder} (known: {known}).")
        found = definitions.load_folder(self.folder).get(name)
        spec, problems, _ = found if found else (None, [], 0.0)
        if spec is None:
            raise InvalidPipeline(f"Pipeline {name} is not valid: {definitions.describe(problems)}.", errors=problems)
        return spec

    def check(self, spec: PipelineSpec, run_parameters: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return definitions.validate(spec, self.settings.diagnostic_steps, self.dirs, run_parameters)

    def check_startup(self) -> None:
        """Log every definition that cannot run (at start; /pipelines lists them with the same problems)."""
        for row in self.catalogue():
            if not row["valid"]:
                logger.error("pipeline %s cannot run: %s", row["name"], definitions.describe(row["problems"]))

    # --- running ---------------------------------------------------------------------------

    def run(self, name: str, parameters: dict[str, Any], only: list[str] | None,
            requested_by: dict[str, Any] | None, spec: PipelineSpec | None = None,
            schedule: dict[str, Any] | None = None) -> Task:
        """Start a run of pipeline ``name``: its task, with the nodes that can start at once started."""
        return self._start(self._prepare(spec or self.load(name), parameters, only, requested_by, schedule))

    def start_only(self, spec: PipelineSpec, parameters: dict[str, Any], only: list[str] | None,
                   requested_by: dict[str, Any] | None, schedule: dict[str, Any] | None) -> Task:
        """Store a new run without starting nodes (inside a caller's transaction; advance it after)."""
        return self.store.start_pipeline(self._prepare(spec, parameters, only, requested_by, schedule))

    def _prepare(self, spec: PipelineSpec, parameters: dict[str, Any], only: list[str] | None,
                 requested_by: dict[str, Any] | None, schedule: dict[str, Any] | None) -> Task:
        name = spec.name
        unknown = sorted(set(parameters) - set(spec.parameters))
        if unknown:
            errors = [{"node": None, "field": f"parameters.{p}", "msg": "not a parameter of this pipeline "
                       f"(it has: {', '.join(spec.parameters) or 'none'})"} for p in unknown]
            raise InvalidPipeline(f"Invalid run of pipeline {name}: {definitions.describe(errors)}.", errors=errors)
        problems = self.check(spec, parameters)
        if problems:
            raise InvalidPipeline(f"Pipeline {name} cannot run: {definitions.describe(problems)}.", errors=problems)
        selected = self._select(spec, only)
        nodes = {}
        for node_name in definitions.order(spec):
            node = spec.nodes[node_name]
            entry = {"step": node.step, "depends_on": node.depends_on, "state": "pending", "task_id": None,
                     "reason": None, "attempt": 0}
            if node_name not in selected:
                entry.update(state="excluded", reason="not selected for this run")
            elif any(nodes[d]["state"] == "excluded" for d in node.depends_on):
                entry.update(state="excluded", reason="a node it depends on is not selected for this run")
            nodes[node_name] = entry
        run_parameters = {**spec.parameters, **parameters}
        parent = Task(task_id=new_task_id(), step_name=PIPELINE_STEP_PREFIX + spec.name, status=TaskStatus.QUEUED,
                      created_at=now_iso(), params=run_parameters, requested_by=requested_by, schedule=schedule,
                      pipeline={"name": spec.name, "version": spec.version, "run_parameters": run_parameters,
                                "only": only, "definition": spec.model_dump(mode="json"), "nodes": nodes,
                                "summary": summary(nodes)})
        return parent

    def _start(self, parent: Task) -> Task:
        self.store.start_pipeline(parent)
        logger.info("pipeline task %s: %s started (%d nodes)", parent.task_id, parent.step_name,
                    len(parent.pipeline["nodes"]))
        return self.advance(parent.task_id) or parent

    @staticmethod
    def _select(spec: PipelineSpec, only: list[str] | None) -> set[str]:
        if not only:
            return set(spec.nodes)
        tags = {tag for node in spec.nodes.values() for tag in node.tags}
        unknown = [item for item in only if item not in spec.nodes and item not in tags]
        if unknown:
            errors = [{"node": None, "field": "only", "msg": f"{item!r} is neither a node nor a tag of {spec.name}"}
                      for item in unknown]
            raise InvalidPipeline(f"Invalid run of pipeline {spec.name}: {definitions.describe(errors)}.", errors=errors)
        return {name for name, node in spec.nodes.items() if name in only or set(node.tags) & set(only)}

    def retry(self, old: Task, requested_by: dict[str, Any] | None) -> Task:
        """A new run of the same pipeline and parameters that re-runs only the failed, stopped and
        skipped nodes (completed ones keep their task and output)."""
        if old.status in (TaskStatus.QUEUED, TaskStatus.RUNNING):
            raise WrongState(f"Pipeline task {old.task_id} is still {old.status.value}; retry it once it ended.",
                             status=old.status.value)
        if old.status is TaskStatus.COMPLETED:
            raise WrongState(f"Pipeline task {old.task_id} completed; there is nothing to retry.", status="completed")
        nodes = {}
        for name, node in old.pipeline["nodes"].items():
            entry = {**node}
            if node["state"] not in ("completed", "excluded"):
                entry.update(state="pending", task_id=None, reason=None, attempt=0)
            elif node["state"] == "completed":
                entry["reason"] = f"completed in pipeline task {old.task_id} (kept)"
            nodes[name] = entry
        pipeline = {**old.pipeline, "nodes": nodes, "summary": summary(nodes)}
        parent = Task(task_id=new_task_id(), step_name=old.step_name, status=TaskStatus.QUEUED, created_at=now_iso(),
                      params=old.params, requested_by=requested_by, pipeline=pipeline, retry_of=old.task_id,
                      attempt=old.attempt + 1)
        return self._start(parent)

    def advance(self, parent_id: str) -> Task | None:
        """Bring a pipeline up to date with its nodes; start the threads of children admitted here."""
        parent, started = self.store.advance_pipeline(parent_id, self._plan, self.runner.worker,
                                                      starts_here=not self.runner.closing)
        for child in started:
            self.runner.launch(child)
        if parent is not None and parent.status.terminal:
            logger.info("pipeline task %s: %s", parent_id, parent.message)
        return parent

    def on_task_end(self, task: Task) -> None:
        """The runner's hook: a child ended here, so its pipeline may move on at once."""
        if task.parent_id:
            try:
                self.advance(task.parent_id)
            except Exception:
                logger.exception("pipeline task %s: could not advance after node %s (the sweep retries)",
                                 task.parent_id, task.node)

    def sweep(self) -> None:
        """Advance every running pipeline that has something to do (children ended elsewhere, stops,
        lost workers); the check reads without the write lock, so idle pipelines cost no transaction."""
        for parent_id in self.store.running_pipelines():
            if not self._idle(parent_id):
                self.advance(parent_id)

    def _idle(self, parent_id: str) -> bool:
        try:
            parent = self.store.get(parent_id)
        except NotFound:
            return True
        if parent.status.terminal or parent.stop_requested:
            return parent.status.terminal
        nodes = parent.pipeline["nodes"]
        if all(node["state"] in ENDED for node in nodes.values()):
            return False
        for node in nodes.values():
            if node["state"] in ("queued", "running"):
                try:
                    child = self.store.get(node["task_id"])
                except NotFound:
                    return False
                if child.status.value != node["state"] or child.attempt != node["attempt"]:
                    return False
            elif node["state"] == "pending":
                deps = [nodes[d]["state"] for d in node["depends_on"]]
                if all(s == "completed" for s in deps) or any(s in BLOCKING for s in deps):
                    return False
        return True

    # --- the plan (runs inside the store transaction; pure apart from new task ids) ----------

    def _plan(self, parent: Task, children: dict[str, Task]) -> PipelineStep:
        decision = PipelineStep()
        pipeline = parent.pipeline
        nodes: dict[str, dict[str, Any]] = pipeline["nodes"]
        for name, node in nodes.items():
            child = children.get(name)
            if child is None or node["state"] in ("completed", "excluded"):
                continue  # not started yet, or kept from an earlier run of the pipeline
            if node["state"] == child.status.value and node["attempt"] == child.attempt:
                continue
            if _interrupted(child) and not parent.stop_requested:
                # Its worker shut down (a restart) and nobody asked it to stop: run the node again. During
                # a whole-server restart that can happen more than once (a worker still draining its
                # connections may claim the new task), never through any fault of the node.
                node.update(state="pending", task_id=None, interrupted=node.get("interrupted", 0) + 1,
                            reason=f"task {child.task_id} was stopped by a worker shutdown; run again",
                            interrupted_tasks=node.get("interrupted_tasks", []) + [child.task_id])
                continue
            node["state"] = child.status.value
            node["attempt"] = child.attempt
            if child.status.terminal:
                node["reason"] = child.message
                node["ended_at"] = child.completed_at
        stopping = parent.stop_requested
        moved = True
        while moved:  # skipping cascades down the graph
            moved = False
            for name, node in nodes.items():
                if node["state"] != "pending":
                    continue
                if stopping:
                    node.update(state="not_started", reason="the pipeline was stopped before this node started")
                    moved = True
                    continue
                blocked = [d for d in node["depends_on"] if nodes[d]["state"] in BLOCKING]
                if blocked:
                    dep = blocked[0]
                    node.update(state="skipped", reason=f"skipped: node {dep} {nodes[dep]['state']}")
                    moved = True
                    continue
                if all(nodes[d]["state"] == "completed" for d in node["depends_on"]):
                    outputs = {d: children[d].result if d in children else None
                               for d in definitions.ancestors(nodes, name)}
                    try:
                        child = self._child(parent, name, outputs, node["depends_on"])
                    except (Unresolved, InvalidParameters, DefinitionError) as exc:
                        node.update(state="failed", reason=f"could not start: {exc}")
                        moved = True
                        continue
                    node.update(state="queued", task_id=child.task_id, attempt=1, reason=None)
                    decision.submit.append(child)
        if stopping:
            decision.stop = [children[name].task_id for name, node in nodes.items()
                             if node["state"] in ("queued", "running") and name in children
                             and not children[name].stop_requested]
        pipeline["summary"] = counts = summary(nodes)
        parent.progress = round(100.0 * sum(1 for n in nodes.values() if n["state"] in ENDED) / len(nodes), 1)
        parent.message = (f"{counts['completed']} of {counts['total']} nodes completed, {counts['running']} running, "
                          f"{counts['queued']} queued, {counts['failed']} failed, {counts['skipped']} skipped")
        if all(node["state"] in ENDED for node in nodes.values()):
            outcome = {"nodes": {name: {"state": n["state"], "task_id": n["task_id"]} for name, n in nodes.items()},
                       "summary": counts}
            if stopping:
                decision.end = (TaskStatus.STOPPED, (f"stopped on request: {counts['completed']} completed, "
                                                     f"{counts['stopped']} stopped, {counts['not_started']} not started"))
            elif any(node["state"] in BLOCKING for node in nodes.values()):
                failed = [n for n, node in nodes.items() if node["state"] in ("failed", "stopped")]
                decision.end = (TaskStatus.FAILED, (f"node(s) {', '.join(failed)} failed; {counts['skipped']} skipped, "
                                                    f"{counts['completed']} completed"))
            else:
                parent.result = outcome
                decision.end = (TaskStatus.COMPLETED, f"all {counts['completed']} nodes completed")
        return decision

    def _child(self, parent: Task, name: str, outputs: dict[str, Any], direct: list[str]) -> Task:
        pipeline = parent.pipeline
        spec = NodeSpec.model_validate(pipeline["definition"]["nodes"][name])
        context = {"run": pipeline["run_parameters"], "dirs": self.dirs,
                   "nodes": {d: (r if isinstance(r, dict) else {"value": r}) for d, r in outputs.items()}}
        raw = definitions.substitute(spec.params, context)
        step = registry.get_step(spec.step, include_diagnostic=True)
        try:
            params = step.params_model.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise InvalidParameters(f"invalid parameters for step {spec.step}: {problems}") from None
        previous: dict[str, Any] = {}
        for dep in direct:  # previous_outputs: the direct dependencies' results, as a v1 chain passed them
            result = outputs.get(dep)
            if isinstance(result, dict):
                previous.update(result)
        policy = self.runner.policies.get(spec.step)
        retry = spec.retry or policy.retry
        concurrency = spec.concurrency or policy.concurrency
        if concurrency is not None and concurrency.mode == "singleton":
            # Inside a pipeline a singleton step waits for the key rather than failing the node.
            concurrency = concurrency.model_copy(update={"mode": "queue"})
        dumped = params.model_dump(mode="json")
        task_id = new_task_id()
        return Task(task_id=task_id, step_name=spec.step, status=TaskStatus.QUEUED, created_at=now_iso(),
                    params=dumped, previous_outputs=previous,
                    secret_fields=[list(path) for path in secrets.secret_paths(step.params_model)],
                    custom_params=spec.custom_params, log_file=str(self.store.paths.log_file(task_id)),
                    requested_by=parent.requested_by, parent_id=parent.task_id, node=name,
                    retry=retry.model_dump() if retry else None,
                    concurrency=concurrency.for_task(dumped) if concurrency else None)


def _interrupted(child: Task) -> bool:
    return child.status is TaskStatus.STOPPED and child.stopped_by is None and not child.stop_requested


def _is_name(name: str) -> bool:
    import re

    return bool(re.fullmatch(definitions.NAME_PATTERN, name))
