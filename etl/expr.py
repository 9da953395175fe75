"""A small, safe expression language for derived columns, filters and break rules.

Expressions look like Python (``quantity * price``, ``abs(diff_value) > 10 and category == 'Cotas'``)
but are parsed into a tree of an allowed few node kinds and evaluated column-wise over a pandas
DataFrame; nothing is ever passed to ``eval``/``exec``. Column names with spaces or accents go in
backticks: `` `Valor Financeiro` > 0 ``.

Allowed: numbers, 'text', True/False/None, columns, + - * / // % **, comparisons (== != < <= > >=,
in [..], not in [..]), and/or/not, and the functions listed in FUNCTIONS.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import Any

import pandas as pd

from etl import money
from etl.errors import EtlError


class ExpressionError(EtlError):
    """The expression is not valid."""


def _str(x: Any) -> Any:
    return x.astype("string") if isinstance(x, pd.Series) else str(x)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": lambda x: x.abs() if isinstance(x, pd.Series) else abs(x),
    "round": lambda x, n=0: x.round(int(n)) if isinstance(x, pd.Series) else round(x, int(n)),
    "upper": lambda x: _str(x).str.upper() if isinstance(x, pd.Series) else str(x).upper(),
    "lower": lambda x: _str(x).str.lower() if isinstance(x, pd.Series) else str(x).lower(),
    "strip": lambda x: _str(x).str.strip() if isinstance(x, pd.Series) else str(x).strip(),
    "contains": lambda x, s: _str(x).str.contains(str(s), regex=False).fillna(False),
    "startswith": lambda x, s: _str(x).str.startswith(str(s)).fillna(False),
    "endswith": lambda x, s: _str(x).str.endswith(str(s)).fillna(False),
    "isnull": lambda x: x.isna() if isinstance(x, pd.Series) else x is None,
    "notnull": lambda x: x.notna() if isinstance(x, pd.Series) else x is not None,
    "coalesce": lambda x, y: x.fillna(y) if isinstance(x, pd.Series) else (y if x is None else x),
    "min": lambda x, y: money.pairwise(x, y, "min"),
    "max": lambda x, y: money.pairwise(x, y, "max"),
}

_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: lambda a, b: a**b,
}
_COMPARE: dict[type, Callable[[Any, Any], Any]] = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.Lt: lambda a, b: a < b,
    ast.LtE: lambda a, b: a <= b,
    ast.Gt: lambda a, b: a > b,
    ast.GtE: lambda a, b: a >= b,
}
_BACKTICK = re.compile(r"`([^`]*)`")


def _error(text: str, offset: int, message: str) -> ExpressionError:
    return ExpressionError(f"{message} at position {offset + 1} of the expression:\n  {text}\n  {' ' * offset}^")


class Expression:
    """A parsed expression; ``evaluate(frame)`` gives a Series (or a scalar)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._names: dict[str, str] = {}
        # Backticked names become placeholders of the same length, so error positions still match.
        def hide(match: re.Match[str]) -> str:
            placeholder = f"_c{len(self._names)}".ljust(len(match.group(0)), "_")
            self._names[placeholder] = match.group(1)
            return placeholder

        source = _BACKTICK.sub(hide, text)
        try:
            self._tree = ast.parse(source.strip() and source, mode="eval")
        except SyntaxError as exc:
            raise _error(text, max(0, (exc.offset or 1) - 1), f"syntax error ({exc.msg})") from None
        self._check(self._tree.body)

    def _check(self, node: ast.AST) -> None:
        allowed = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.Name,
                   ast.Constant, ast.List, ast.Tuple, ast.Load, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd,
                   ast.In, ast.NotIn, *_BIN_OPS, *_COMPARE)
        for child in ast.walk(node):
            if not isinstance(child, allowed):
                offset = getattr(child, "col_offset", 0)
                raise _error(self.text, offset, f"{type(child).__name__} is not allowed")
            if isinstance(child, ast.Call):
                if not isinstance(child.func, ast.Name) or child.func.id not in FUNCTIONS or child.keywords:
                    name = getattr(child.func, "id", "?")
                    raise _error(self.text, child.col_offset,
                                 f"unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
            if isinstance(child, ast.Constant) and not isinstance(child.value, (int, float, str, bool, type(None))):
                raise _error(self.text, child.col_offset, "only numbers, text, True, False and None are allowed")

    def columns(self) -> set[str]:
        names = {n.id for n in ast.walk(self._tree) if isinstance(n, ast.Name)}
        called = {n.func.id for n in ast.walk(self._tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        return {self._names.get(name, name) for name in names - called}

    def evaluate(self, frame: pd.DataFrame) -> Any:
        return self._eval(self._tree.body, frame)

    def _eval(self, node: ast.AST, frame: pd.DataFrame) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            name = self._names.get(node.id, node.id)
            if name not in frame.columns:
                known = ", ".join(map(str, frame.columns))
                raise _error(self.text, node.col_offset, f"unknown column {name!r} (columns: {known})")
            return frame[name]
        if isinstance(node, (ast.List, ast.Tuple)):
            return [self._eval(item, frame) for item in node.elts]
        if isinstance(node, ast.UnaryOp):
            value = self._eval(node.operand, frame)
            if isinstance(node.op, ast.Not):
                return ~value.astype(bool) if isinstance(value, pd.Series) else not value
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BinOp):
            return _BIN_OPS[type(node.op)](self._eval(node.left, frame), self._eval(node.right, frame))
        if isinstance(node, ast.BoolOp):
            values = [self._eval(v, frame) for v in node.values]
            result = _as_bool(values[0], frame)
            for value in values[1:]:
                result = (result & _as_bool(value, frame)) if isinstance(node.op, ast.And) else (
                    result | _as_bool(value, frame))
            return result
        if isinstance(node, ast.Compare):
            left = self._eval(node.left, frame)
            result = None
            for op, right_node in zip(node.ops, node.comparators):
                right = self._eval(right_node, frame)
                if isinstance(op, (ast.In, ast.NotIn)):
                    if not isinstance(right, list):
                        raise _error(self.text, right_node.col_offset, "'in' needs a list, e.g. x in ['A', 'B']")
                    part = left.isin(right) if isinstance(left, pd.Series) else left in right
                    part = ~part if isinstance(op, ast.NotIn) else part
                else:
                    part = _COMPARE[type(op)](left, right)
                if isinstance(part, pd.Series):
                    part = part.fillna(False).astype(bool)
                result = part if result is None else result & part
                left = right
            return result
        if isinstance(node, ast.Call):
            args = [self._eval(arg, frame) for arg in node.args]
            try:
                return FUNCTIONS[node.func.id](*args)
            except TypeError as exc:
                raise _error(self.text, node.col_offset, f"wrong arguments for {node.func.id}(): {exc}") from None
        raise _error(self.text, getattr(node, "col_offset", 0), f"{type(node).__name__} is not allowed")


def _as_bool(value: Any, frame: pd.DataFrame) -> Any:
    if isinstance(value, pd.Series):
        return value.fillna(False).astype(bool)
    return pd.Series(bool(value), index=frame.index)


def mask(text: str, frame: pd.DataFrame) -> pd.Series:
    """A boolean Series for a filter expression."""
    value = Expression(text).evaluate(frame)
    return _as_bool(value, frame)
