"""Workflow steps that reshape tables: aggregate (group or grand totals, weighted averages), stack, derive."""

from __future__ import annotations

import decimal
from decimal import Decimal
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from etl import money, runtime
from etl.datasets import DataPath, DatasetError, concat
from etl.expr import Expression, ExpressionError
from etl.registry import step
from etl.results import dataset_result
from etl.steps.workflow import load, require, save

Metric = Literal["sum", "mean", "min", "max", "count", "nunique", "first", "weighted_mean"]
# Places of a weighted average beyond those of its column (a rate of 4 places is given with 10).
WEIGHTED_EXTRA_PLACES = 6
SAMPLE_STOCKS = ["fidc/estoque_AGROSAFRA_20260213.csv", "fidc/estoque_AGROSAFRA_20260218.csv"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AggregateParams(_Params):
    dataset: DataPath | None = None
    by: list[str] = Field(["cnpj_fundo"], description="Group by these columns; [] gives one row of grand totals.")
    metrics: dict[str, Metric | list[Metric]] = Field(
        {"valor_mercado": "sum", "codigo_ativo": "count"},
        description="Column -> aggregation(s): sum, mean, min, max, count, nunique, first, weighted_mean.")
    weights: dict[str, str] = Field(default_factory=dict, description="Column -> the weight column of its "
                                                                      "weighted_mean (e.g. taxa -> valor).")

    @model_validator(mode="after")
    def _weights_named(self) -> AggregateParams:
        for column, how in self.metrics.items():
            if "weighted_mean" in ([how] if isinstance(how, str) else how) and column not in self.weights:
                raise ValueError(f"metrics.{column} is weighted_mean: name its weight column in weights.{column}")
        return self


def _weighted(frame: pd.DataFrame, by: list[str], column: str, weight: str) -> pd.Series:
    """sum(value * weight) / sum(weight) per group, in exact decimal arithmetic."""
    values, weights = money.to_decimal(frame[column]), money.to_decimal(frame[weight])
    places = money.scale_of(values) + WEIGHTED_EXTRA_PLACES
    work = pd.DataFrame({"product": money.narrow(values * weights), "weight": weights.where(values.notna())})
    if by:
        work[by] = frame[by]
        sums = work.groupby(by, dropna=False, sort=True).agg(product=("product", "sum"), weight=("weight", "sum"))
    else:
        sums = pd.DataFrame({"product": [money.total(work["product"])], "weight": [money.total(work["weight"])]})
    quantum = Decimal(1).scaleb(-places)
    with decimal.localcontext() as context:
        context.prec = 60
        result = [None if w in (None, 0) or w is pd.NA or p is pd.NA else (Decimal(p) / Decimal(w)).quantize(quantum)
                  for p, w in zip(sums["product"], sums["weight"], strict=True)]
    text = pd.Series([None if r is None else money.json_text(r) for r in result], dtype="string")
    return money.from_machine_text(text, places)


@step("aggregate", AggregateParams, "Aggregate")
def aggregate(params: AggregateParams) -> dict[str, Any]:
    """Group and aggregate (sum, mean, min, max, count, nunique, first, weighted_mean); `by: []` gives grand totals."""
    frame, _ = load(params.dataset)
    require(frame, params.by + list(params.metrics) + list(params.weights.values()), "aggregate")
    plan = [(column, how) for column, hows in params.metrics.items()
            for how in ([hows] if isinstance(hows, str) else hows)]
    _refuse_text(frame, plan, params.weights)
    plain = {f"{column}_{how}": (column, how) for column, how in plan if how != "weighted_mean"}
    if params.by:
        result = frame.groupby(params.by, dropna=False, as_index=False, sort=True).agg(**plain) if plain else \
            frame[params.by].drop_duplicates().sort_values(params.by).reset_index(drop=True)
    else:
        result = pd.DataFrame({name: [_grand(frame[column], how)] for name, (column, how) in plain.items()})
    for column, how in plan:
        name = f"{column}_{how}"
        if how == "weighted_mean":
            result[name] = _weighted(frame, params.by, column, params.weights[column]).to_numpy()
        elif money.is_decimal(result[name]):
            result[name] = money.narrow(result[name])
        elif money.is_decimal(frame[column]) and how in ("sum", "mean", "min", "max", "first"):
            result[name] = money.to_decimal(result[name], money.scale_of(frame[column]))
    result = result[[*params.by, *[f"{column}_{how}" for column, how in plan]]]
    return dataset_result(result, save(result, "aggregate"))


def _refuse_text(frame: pd.DataFrame, plan: list[tuple[str, str]], weights: dict[str, str]) -> None:
    """sum/mean of text would concatenate ("150000" + "250000"): refuse and say how to type the column."""
    arithmetic = [(column, how) for column, how in plan if how in ("sum", "mean", "weighted_mean")]
    arithmetic += [(weights[column], "weight") for column, how in plan if how == "weighted_mean"]
    for column, how in arithmetic:
        values = frame[column]
        if isinstance(values.dtype, pd.StringDtype) or values.dtype == object and bool(
                values.map(lambda v: isinstance(v, str)).any()):
            raise DatasetError(f"aggregate: {column!r} is text, so its {how} cannot be computed (the read kept it "
                               f"as text, e.g. {values.dropna().iloc[0]!r} looked like a code); read it with "
                               f"types: {{{column}: money}} (or number, integer)")


def _grand(values: pd.Series, how: str) -> Any:
    """One grand-total cell, exact for money."""
    if how == "count":
        return int(values.notna().sum())
    if how == "nunique":
        return int(values.nunique())
    if how == "first":
        present = values.dropna()
        return present.iloc[0] if len(present) else None
    if money.is_decimal(values):
        if how == "sum":
            return money.total(values)
        present = values.dropna()
        if not len(present):
            return None
        if how == "mean":
            return (money.total(present) / len(present)).quantize(Decimal(1).scaleb(-money.scale_of(values)))
        return getattr(present, how)()
    return getattr(values, how)()


class StackParams(_Params):
    datasets: list[DataPath] = Field(SAMPLE_STOCKS, min_length=1,
                                     description="Datasets to stack (union by column name); previous_outputs."
                                                 "dataset comes first when given.")
    label_column: str | None = Field("source_dataset", description="Column naming each row's dataset (null: none).")


@step("stack", StackParams, "Stack datasets")
def stack(params: StackParams) -> dict[str, Any]:
    """Stack datasets one under the other (union by column name); money columns stay exact."""
    references = list(params.datasets)
    earlier = runtime.previous_outputs().get("dataset")
    if earlier and earlier not in references:
        references.insert(0, earlier)
    parts = []
    for reference in references:
        frame, path = load(reference)
        if params.label_column:
            frame.insert(0, params.label_column, path.name)
        parts.append(frame)
    whole = concat(parts)
    return dataset_result(whole, save(whole, "stack"), stacked=[len(p) for p in parts])


class DeriveParams(_Params):
    dataset: DataPath | None = None
    columns: dict[str, str] = Field({"valor_por_unidade": "round(valor_mercado / quantidade, 6)"},
                                    description="New (or replaced) column -> safe expression over the columns, in "
                                                "order (a later one may use an earlier one).")

    @model_validator(mode="after")
    def _parse(self) -> DeriveParams:
        for name, text in self.columns.items():
            try:
                Expression(text)
            except ExpressionError as exc:
                raise ValueError(f"columns.{name}: {exc}") from None
        return self


@step("derive", DeriveParams, "Derive columns")
def derive(params: DeriveParams) -> dict[str, Any]:
    """Add columns computed with safe expressions (money arithmetic stays exact)."""
    frame, _ = load(params.dataset)
    for name, text in params.columns.items():
        try:
            value = Expression(text).evaluate(money.widened(frame))
        except (ArithmeticError, TypeError, ValueError) as exc:
            raise DatasetError(f"derive {name}: {text!r} cannot be computed here: {exc}") from None
        frame[name] = money.tidy(value) if isinstance(value, pd.Series) else value
    return dataset_result(frame, save(frame, "derive"))
