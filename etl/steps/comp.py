"""Completeness-control steps (v1 names and parameters): each persists its output in the run folder
``<tempFilePath>/<control>/<run date>/`` where the next step finds it; `completeness_control_comp`
runs the whole chain in one task.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from etl import money, runtime
from etl.comp import rolling, stages, totals
from etl.comp.config import resolve_tokens
from etl.comp.report import write_report
from etl.comp.run import CompParams, Run, open_run
from etl.registry import step
from etl.results import json_value
from etl.writers import write_csv, write_parquet

logger = logging.getLogger(__name__)

SIDES = {"src": "source", "tgt": "target"}


# --- the steps -------------------------------------------------------------------------------


@step("reading_config_comp", CompParams, "Read the control config")
def reading_config_comp(params: CompParams) -> dict[str, Any]:
    """Load and validate the control config, resolve the run date and list the expected files."""
    run = open_run(params)
    expected = []
    for side in SIDES:
        dataset = run.config.side(side)
        pattern = resolve_tokens(dataset.path, run.run_date, run.config.control)
        try:
            found: str | None = str(stages.find_input(run.root, dataset.path, run.run_date, run.config.control))
        except stages.DataError:
            found = None
        expected.append({"side": side, "name": dataset.name, "pattern": pattern, "file": found,
                         "exists": found is not None})
        for lookup in dataset.enrichment:
            path = stages.find_latest(run.root, lookup.path, run.run_date, run.config.control)
            expected.append({"side": side, "name": lookup.name, "pattern": lookup.path, "file": path and str(path),
                             "exists": path is not None})
    (run.path("config.json")).write_text(run.config.model_dump_json(indent=2), encoding="utf-8")
    logger.info("control %s for %s: config %s", run.config.control, f"{run.run_date:%d/%m/%Y}", run.config_path.name)
    frame = pd.DataFrame(expected)
    return run.result(frame, config_file=str(run.config_path), expected_files=expected,
                      missing=[e["pattern"] for e in expected if not e["exists"]])


def _read(side: str, params: CompParams) -> dict[str, Any]:
    run = open_run(params)
    dataset = run.config.side(side)
    path = stages.find_input(run.root, dataset.path, run.run_date, run.config.control)
    logger.info("reading %s (%s) from %s", dataset.name, side, path)
    raw = stages.read_dataset(path, dataset)
    run.save(raw, f"{side}_raw.parquet")
    totals.record_read(run.run_dir, side, path, max(0, len(raw) - 1))
    warnings = raw.attrs.get("warnings", [])
    for warning in warnings:
        logger.warning("%s", warning)
    return run.result(raw, file=str(path), read=raw.attrs.get("read", {}), warnings=warnings)


def _pre_harmonise(side: str, params: CompParams) -> dict[str, Any]:
    run = open_run(params)
    dataset = run.config.side(side)
    raw = run.load(f"{side}_raw.parquet", f"read_{side}_comp")
    table = stages.pre_harmonise(raw, dataset.pre_harmonisation, dataset.read.header_row, dataset.name)
    run.save(table, f"{side}_pre.parquet")
    return run.result(table, columns=list(table.columns), rows_dropped=int(len(raw) - len(table)))


def _harmonise(side: str, params: CompParams) -> dict[str, Any]:
    run = open_run(params)
    dataset = run.config.side(side)
    table = run.load(f"{side}_pre.parquet", f"pre_harmonisation_{side}_comp")
    table, warnings = stages.harmonise(table, dataset.harmonisation, dataset.name, decimal_mark=dataset.read.decimal,
                                       thousands=dataset.read.thousands)
    for warning in warnings:
        logger.warning("%s", warning)
    run.save(table, f"{side}_harm.parquet")
    return run.result(table, warnings=warnings)


def _file_search(side: str, params: CompParams) -> dict[str, Any]:
    run = open_run(params)
    dataset = run.config.side(side)
    found = {}
    for lookup in dataset.enrichment:
        path = stages.find_latest(run.root, lookup.path, run.run_date, run.config.control)
        if path is None and lookup.required:
            raise stages.DataError(f"lookup {lookup.name}: no file matching {lookup.path!r} in {run.root} on or "
                                   f"before {run.run_date:%d/%m/%Y}")
        found[lookup.name] = str(path) if path else None
        logger.info("lookup %s: %s", lookup.name, path or "no file")
    run.path(f"{side}_lookups.json").write_text(json.dumps(found, ensure_ascii=False, indent=2), encoding="utf-8")
    return run.result(lookups=found)


def _enrich(side: str, params: CompParams) -> dict[str, Any]:
    run = open_run(params)
    dataset = run.config.side(side)
    table = run.load(f"{side}_harm.parquet", f"harmonisation_{side}_comp")
    lookups_file = run.path(f"{side}_lookups.json")
    if not lookups_file.exists():
        raise stages.DataError(f"{lookups_file.name} is missing: run enrichment_file_search_{side}_comp first")
    found = json.loads(lookups_file.read_text(encoding="utf-8"))
    pairs = [(lookup, Path(found[lookup.name]) if found.get(lookup.name) else None) for lookup in dataset.enrichment]
    table = stages.enrich(table, pairs, dataset.name)
    run.save(table, f"{side}_enriched.parquet")
    return run.result(table)


def _data_transform(side: str, params: CompParams) -> dict[str, Any]:
    run = open_run(params)
    dataset = run.config.side(side)
    table = run.load(f"{side}_enriched.parquet", f"enrichment_{side}_comp")
    before = len(table)
    table = stages.transform(table, dataset.transform)
    run.save(table, f"{side}_final.parquet")
    return run.result(table, rows_filtered=int(before - len(table)))


@step("combine_data_comp", CompParams, "Combine source and target")
def combine_data_comp(params: CompParams) -> dict[str, Any]:
    """Full outer join of source and target on the keys: matched, src_only, tgt_only."""
    run = open_run(params)
    src = run.load("src_final.parquet", "data_transform_src_comp")
    tgt = run.load("tgt_final.parquet", "data_transform_tgt_comp")
    combined = stages.combine(src, tgt, run.config.keys, run.config.compare)
    run.save(combined, "combined.parquet")
    counts = combined["status"].value_counts().to_dict()
    return run.result(combined, histogram_data={k: int(v) for k, v in counts.items()})


@step("apply_rules_comp", CompParams, "Compare and explain breaks")
def apply_rules_comp(params: CompParams) -> dict[str, Any]:
    """Compare values within tolerances; the first matching rule explains each break."""
    run = open_run(params)
    combined = run.load("combined.parquet", "combine_data_comp")
    results = stages.apply_rules(combined, run.config.compare, run.config.rules)
    run.save(results, "results.parquet")
    breaks = results[results["break"]]
    histogram = {str(k): int(v) for k, v in breaks["category"].value_counts().items()}
    return run.result(breaks, histogram_data=histogram, break_count=int(len(breaks)),
                      within_tolerance=int(results["within_tolerance"].sum()))


def _summary(run: Run, results: pd.DataFrame) -> list[tuple[str, Any]]:
    breaks = results[results["break"]]
    return [
        ("Control", run.config.control),
        ("Description", run.config.description),
        ("Run date", run.run_date),
        ("Environment", run.env),
        ("Source", run.config.source.name),
        ("Target", run.config.target.name),
        ("Rows compared", int(len(results))),
        ("Matched", int((results["status"] == stages.MATCHED).sum())),
        ("Only in source", int((results["status"] == stages.SRC_ONLY).sum())),
        ("Only in target", int((results["status"] == stages.TGT_ONLY).sum())),
        ("Breaks", int(len(breaks))),
        ("Explained breaks", int((breaks["category"] != stages.UNEXPLAINED).sum())),
        ("Unexplained breaks", int((breaks["category"] == stages.UNEXPLAINED).sum())),
        ("Within tolerance", int(results["within_tolerance"].sum())),
        ("Generated", dt.datetime.now().strftime("%d/%m/%Y %H:%M")),
    ]


@step("output_rules_comp", CompParams, "Write the report")
def output_rules_comp(params: CompParams) -> dict[str, Any]:
    """Write the Excel report (Summary, Breaks, Unexplained, Matched sample) and full CSV/parquet results."""
    run = open_run(params)
    results = run.load("results.parquet", "apply_rules_comp")
    out_dir = runtime.output_dir() / run.config.control / f"{run.run_date:%Y-%m-%d}"
    out_dir.mkdir(parents=True, exist_ok=True)
    breaks = results[results["break"]]
    by_category = (breaks.groupby(["category", "break_type"], dropna=False).size().reset_index(name="breaks")
                   if len(breaks) else pd.DataFrame(columns=["category", "break_type", "breaks"]))
    report = out_dir / resolve_tokens(run.config.output.report_name, run.run_date, run.config.control)
    amounts = [c.column for c in run.config.compare]
    sides = {side: {"name": run.config.side(side).name, **totals.files_read(run.run_dir, side),
                    "before": run.load(f"{side}_harm.parquet", f"harmonisation_{side}_comp", amounts),
                    "after": run.load(f"{side}_final.parquet", f"data_transform_{side}_comp", amounts)}
             for side in SIDES}
    control_totals = totals.control_totals(sides, results, amounts)
    write_report(report, _summary(run, results), control_totals, by_category, breaks,
                 breaks[breaks["category"] == stages.UNEXPLAINED],
                 results[~results["break"]].head(run.config.output.matched_sample_rows))
    stem = f"{run.config.control}_{run.run_date:%Y%m%d}"
    full_parquet = write_parquet(results, out_dir / f"{stem}_results.parquet")
    full_csv = write_csv(results, out_dir / f"{stem}_results.csv", places=_csv_places(run.config.compare))
    files = [str(report), str(full_parquet), str(full_csv)]
    for path in files:
        runtime.add_artifact(path)
    histogram = {str(k): int(v) for k, v in breaks["category"].value_counts().items()}
    return run.result(breaks, files=files, report=str(report), histogram_data=histogram,
                      break_count=int(len(breaks)), control_totals=totals.totals_json(control_totals))


def _csv_places(compare: list[Any]) -> dict[str, int]:
    """Compared columns finer than the cent (quantities with abs_tolerance 0.0001) keep the tolerance's
    places in the CSV; money is written with two."""
    places = {}
    for rule in compare:
        finest = max(-rule.abs_tolerance.normalize().as_tuple().exponent, money.MONEY_SCALE)
        if finest > money.MONEY_SCALE:
            places.update({f"{rule.column}{end}": min(finest, money.MAX_SCALE) for end in ("_src", "_tgt")})
            places[f"diff_{rule.column}"] = min(finest, money.MAX_SCALE)
    return places


@step("break_rolling_comp", CompParams, "Age the breaks")
def break_rolling_comp(params: CompParams) -> dict[str, Any]:
    """Compare today's breaks with the previous business day's (ANBIMA): new, persisting, resolved, age."""
    run = open_run(params)
    results = run.load("results.parquet", "apply_rules_comp")
    breaks = results[results["break"]].copy()
    breaks["break_key"] = stages.break_key(breaks, run.config.keys)
    history = runtime.output_dir() / run.config.control / "break_history.parquet"
    today, resolved = rolling.roll(breaks, history, run.run_date)
    aged = breaks.merge(today[["break_key", "first_seen", "age_business_days", "state"]], on="break_key")
    out = runtime.output_dir() / run.config.control / f"{run.run_date:%Y-%m-%d}" / \
        f"{run.config.control}_{run.run_date:%Y%m%d}_aged_breaks.parquet"
    write_parquet(aged, out)
    runtime.add_artifact(out)
    counted = today["state"].value_counts()
    states = {"new": int(counted.get("new", 0)), "persisting": int(counted.get("persisting", 0)),
              "resolved": int(len(resolved))}
    compared_with = today.attrs.get("compared_with")
    return run.result(aged[[*run.config.keys, "category", "first_seen", "age_business_days", "state"]],
                      histogram_data=states,
                      previous_business_day=f"{today.attrs['previous_business_day']:%Y-%m-%d}",
                      compared_with_run=f"{compared_with:%Y-%m-%d}" if compared_with else None,
                      resolved=[json_value(k) for k in resolved["break_key"].head(100)],
                      history_file=str(history), files=[str(out)])


SIDE_STAGES: list[tuple[str, str, Callable[[str, CompParams], dict[str, Any]], str]] = [
    ("read_{side}_comp", "Read the {name} file", _read, "Read the {name} file as raw text cells."),
    ("pre_harmonisation_{side}_comp", "Clean the raw {name} table", _pre_harmonise,
     "Find the header row, cut the table, drop empty and total rows."),
    ("harmonisation_{side}_comp", "Harmonise the {name} columns", _harmonise,
     "Rename and type columns: Brazilian numbers and dates, CNPJ with check digits, trimmed text."),
    ("enrichment_file_search_{side}_comp", "Find the {name} lookup files", _file_search,
     "Find each lookup file by pattern: the latest on or before the run date."),
    ("enrichment_{side}_comp", "Enrich the {name} data", _enrich, "Join the lookup tables (e.g. a DE PARA workbook)."),
    ("data_transform_{side}_comp", "Transform the {name} data", _data_transform,
     "Derived columns and filters from safe expressions."),
]


def _register_side_steps() -> dict[str, Callable[[CompParams], dict[str, Any]]]:
    made = {}
    for side, name in SIDES.items():
        for pattern, title, stage, description in SIDE_STAGES:
            def run_stage(params: CompParams, _stage=stage, _side=side) -> dict[str, Any]:
                return _stage(_side, params)

            run_stage.__doc__ = description.format(name=name)
            step_name = pattern.format(side=side)
            made[step_name] = step(step_name, CompParams, title.format(name=name))(run_stage)
    return made


_SIDE_STEPS = _register_side_steps()

CHAIN = [
    ("reading_config_comp", reading_config_comp),
    *[(f"{p.format(side=s)}", _SIDE_STEPS[p.format(side=s)]) for p, *_ in SIDE_STAGES for s in SIDES],
    ("combine_data_comp", combine_data_comp),
    ("apply_rules_comp", apply_rules_comp),
    ("output_rules_comp", output_rules_comp),
    ("break_rolling_comp", break_rolling_comp),
]


@step("completeness_control_comp", CompParams, "Run the whole completeness control")
def completeness_control_comp(params: CompParams) -> dict[str, Any]:
    """Every stage in order, in one task: progress per stage, stop honoured between stages."""
    stages_done = {}
    final: dict[str, Any] = {}
    for index, (name, stage) in enumerate(CHAIN):
        runtime.check_stop()
        runtime.progress(100 * index / len(CHAIN), f"{name} ({index + 1}/{len(CHAIN)})")
        logger.info("stage %d/%d: %s", index + 1, len(CHAIN), name)
        outcome = stage(params)
        stages_done[name] = {k: v for k, v in outcome.items() if k in ("row_count", "histogram_data", "warnings",
                                                                       "files", "break_count", "control_totals")}
        final = outcome
    report = stages_done["output_rules_comp"]
    return {**{k: v for k, v in final.items() if k not in ("calculation_results",)},
            "calculation_results": final.get("calculation_results"), "stages": stages_done,
            "files": report.get("files", []) + final.get("files", []),
            "break_count": report.get("break_count"), "control_totals": report.get("control_totals"),
            "histogram_data": final.get("histogram_data")}
