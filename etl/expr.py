"""A small, safe expression language for derived columns, filters and break rules.

Expressions look like Python (``quantity * price``, ``abs(diff_value) > 10 and category == 'Cotas'``)
but are parsed into a tree of an allowed few node kinds and evaluated column-wise over a pandas
DataFrame; nothing is ever passed to ``eval``/``exec``. Column names with spaces or accents go in
backticks: `` `Valor Financeiro` > 0 ``.

Allowed: numbers, 'text', True/False/None, columns, + - * / // % **, comparisons (== != < <= > >=,
in [..], not in [..]), and/or/not, and the functions listed in FUNCTIONS.

Bounded, so one expression cannot hold a worker: its length, size and nesting; whole numbers of at
most MAX_INT_BITS bits (``9**9**9**9`` is refused before it is computed); text of at most
MAX_TEXT_CHARS per value and MAX_TOTAL_TEXT_CHARS per column (``'a' * 10**9`` likewise); ``%`` only
on numbers (on text it would be formatting); lists only after ``in``. The parts made of constants
alone are computed when the expression is parsed, so those errors appear when a task is submitted.

Number literals with places (``1.1``) are exact decimals: with a money (decimal) or whole-number
column they compute exactly (``valor * 1.1`` is ``0.11`` for ``0.10``, never ``0.11000000000000001``);
only with a float column do they become floats.
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Any

import pandas as pd
from pydantic import AfterValidator

from etl import money
from etl.errors import EtlError


MAX_EXPRESSION_CHARS = 10_000
MAX_NODES = 5_000
MAX_DEPTH = 60
MAX_INT_BITS = 512
MAX_TEXT_CHARS = 100_000
MAX_TOTAL_TEXT_CHARS = 50_000_000
MAX_ROUND_DIGITS = 30
MAX_DECIMAL_DIGITS = 400


class ExpressionError(EtlError):
    """The expression is not valid."""


class _Limit(Exception):
    """An operation would exceed a bound (turned into an ExpressionError at its position)."""


def _str(x: Any) -> Any:
    return x.astype("string") if isinstance(x, pd.Series) else str(x)


FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": lambda x: x.abs() if isinstance(x, pd.Series) else abs(x),
    "round": lambda x, n=0: x.round(_digits(n)) if isinstance(x, pd.Series) else round(x, _digits(n)),
    "upper": lambda x: _str(x).str.upper() if isinstance(x, pd.Series) else str(x).upper(),
    "lower": lambda x: _str(x).str.lower() if isinstance(x, pd.Series) else str(x).lower(),
    "strip": lambda x: _str(x).str.strip() if isinstance(x, pd.Series) else str(x).strip(),
    "contains": lambda x, s: _str(x).str.contains(str(s), regex=False).fillna(False),
    "startswith": lambda x, s: _str(x).str.startswith(str(s)).fillna(False),
    "endswith": lambda x, s: _str(x).str.endswith(str(s)).fillna(False),
    "isnull": lambda x: x.isna() if isinstance(x, pd.Series) else x is None,
    "notnull": lambda x: x.notna() if isinstance(x, pd.Series) else x is not None,
    "coalesce": lambda x, y: _coalesce(*_exact(x, y)),
    "min": lambda x, y: money.pairwise(*_exact(x, y), "min"),
    "max": lambda x, y: money.pairwise(*_exact(x, y), "max"),
}

def _coalesce(x: Any, y: Any) -> Any:
    return x.fillna(y) if isinstance(x, pd.Series) else (y if x is None else x)


def _literal(value: Any) -> Any:
    """A number literal with places as an exact Decimal ("1.1" as written, not the double nearest it)."""
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))
    return value


def _meet(value: Any, other: Any) -> Any:
    """``value`` ready to meet ``other``: a Decimal literal stays exact with decimal and whole-number
    columns (those become decimal) and becomes a float only beside floats."""
    if isinstance(value, Decimal):
        if isinstance(other, float) or (isinstance(other, pd.Series) and pd.api.types.is_float_dtype(other.dtype)):
            return float(value)
        return value
    if isinstance(value, float) and math.isfinite(value) and (isinstance(other, Decimal) or money.is_decimal(other)):
        return Decimal(repr(value))
    if (isinstance(value, pd.Series) and isinstance(other, Decimal) and pd.api.types.is_integer_dtype(value.dtype)
            and not pd.api.types.is_bool_dtype(value.dtype)):
        return money.to_decimal(value)
    return value


def _exact(a: Any, b: Any) -> tuple[Any, Any]:
    return _meet(a, b), _meet(b, a)


def _digits(n: Any) -> int:
    if isinstance(n, pd.Series) or not isinstance(n, (int, float, Decimal)) or abs(n) > MAX_ROUND_DIGITS:
        raise _Limit(f"round() takes a number of digits between -{MAX_ROUND_DIGITS} and {MAX_ROUND_DIGITS}")
    return int(n)


def _is_text(x: Any) -> bool:
    if isinstance(x, pd.Series):
        if isinstance(x.dtype, pd.StringDtype):
            return True
        # Object columns also hold exact numbers (Decimal): only text values count as text.
        return x.dtype == object and bool(x.map(lambda v: isinstance(v, str)).any())
    return isinstance(x, str)


def _text_lengths(x: Any) -> Any:
    if isinstance(x, pd.Series):
        return x.map(lambda v: len(v) if isinstance(v, str) else 0).astype("int64")
    return len(x) if isinstance(x, str) else 0


def _check_text_size(lengths: Any) -> None:
    """Refuse text results longer than the bounds (checked before the text is built)."""
    if isinstance(lengths, pd.Series):
        longest, total = (int(lengths.max()) if len(lengths) else 0), int(lengths.sum())
    else:
        longest = total = int(lengths)
    if longest > MAX_TEXT_CHARS:
        raise _Limit(f"the text would be {longest:,} characters long (at most {MAX_TEXT_CHARS:,})")
    if total > MAX_TOTAL_TEXT_CHARS:
        raise _Limit(f"the texts would hold {total:,} characters (at most {MAX_TOTAL_TEXT_CHARS:,})")


def _check_int(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > MAX_INT_BITS:
        raise _Limit(f"the number would have more than {MAX_INT_BITS} bits")
    if isinstance(value, Decimal) and value.is_finite():
        # Decimals reach 10**999999 (0.5 ** 10**150 is 0E-1000026): written out, a megabyte per value.
        if not value:
            return Decimal(0) if abs(value.as_tuple().exponent) > MAX_DECIMAL_DIGITS else value
        if max(abs(value.adjusted()), abs(value.as_tuple().exponent)) > MAX_DECIMAL_DIGITS:
            raise _Limit(f"the number would be written with more than {MAX_DECIMAL_DIGITS} digits")
    return value


def _add(a: Any, b: Any) -> Any:
    if _is_text(a) and _is_text(b):
        _check_text_size(_text_lengths(a) + _text_lengths(b))
    return _check_int(a + b)


def _mult(a: Any, b: Any) -> Any:
    text, count = (a, b) if _is_text(a) else (b, a) if _is_text(b) else (None, None)
    if text is not None:
        # Repetition: size the result from the inputs, never by building it.
        times = count.where(count > 0, 0) if isinstance(count, pd.Series) else max(count, 0) if isinstance(
            count, (int, float)) else 0
        _check_text_size(_text_lengths(text) * times)
    return _check_int(a * b)


def _mod(a: Any, b: Any) -> Any:
    if _is_text(a) or _is_text(b):
        raise _Limit("% needs numbers (on text it would be formatting)")
    return a % b


def _python_ints(x: Any) -> list[int]:
    """The unbounded whole numbers in ``x`` (numpy's fixed-width ones cannot grow)."""
    if isinstance(x, pd.Series):
        if x.dtype != object:
            return [int(x.max())] if pd.api.types.is_integer_dtype(x.dtype) and len(x) else []
        return [v for v in x if isinstance(v, int) and not isinstance(v, bool)]
    return [x] if isinstance(x, int) and not isinstance(x, bool) else []


def _power(a: Any, b: Any) -> Any:
    if isinstance(b, Decimal):
        # A whole exponent written with places (2.0) is sized like any whole one; others are roots (floats).
        b = int(b) if b == b.to_integral_value() else float(b)
    if isinstance(a, Decimal) and isinstance(b, float):
        a = float(a)
    bases = [abs(v) for v in _python_ints(a) if abs(v) > 1] if not isinstance(a, pd.Series) or a.dtype == object else []
    exponents = [v for v in _python_ints(b) if v > 0]
    if bases and exponents:
        # Refused before computing: 9**9**9**9 would hold the CPU (and the GIL) for hours.
        if max(exponents) * math.log2(max(bases)) > MAX_INT_BITS:
            raise _Limit(f"the power would have more than {MAX_INT_BITS} bits")
    return _check_int(a**b)


def _divide(a: Any, b: Any) -> Any:
    if isinstance(a, int) and isinstance(b, int) and not isinstance(a, bool) and not isinstance(b, bool):
        # 1/3 between literals is an exact decimal too, so valor * (1/3) stays decimal.
        return _check_int(Decimal(a) / Decimal(b))
    return _check_int(a / b)


_BIN_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: _add,
    ast.Sub: lambda a, b: _check_int(a - b),
    ast.Mult: _mult,
    ast.Div: _divide,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: _mod,
    ast.Pow: _power,
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

        if len(text) > MAX_EXPRESSION_CHARS:
            raise ExpressionError(f"the expression is {len(text):,} characters long (at most {MAX_EXPRESSION_CHARS:,})")
        source = _BACKTICK.sub(hide, text)
        try:
            self._tree = ast.parse(source.strip() and source, mode="eval")
        except (SyntaxError, RecursionError, MemoryError) as exc:
            offset = getattr(exc, "offset", None) or 1
            raise _error(text, max(0, offset - 1), f"syntax error ({getattr(exc, 'msg', 'too deeply nested')})") from None
        nodes = self._nodes(self._tree.body)
        self._check(nodes)
        self._fold(nodes)

    def _nodes(self, root: ast.AST) -> list[ast.AST]:
        """Every node, parents first, within the size and nesting bounds (one pass, no recursion)."""
        nodes: list[ast.AST] = []
        stack = [(root, 1)]
        while stack:
            node, depth = stack.pop()
            nodes.append(node)
            if len(nodes) > MAX_NODES:
                raise ExpressionError(f"the expression has more than {MAX_NODES:,} parts")
            if depth > MAX_DEPTH:
                raise _error(self.text, getattr(node, "col_offset", 0), f"nested deeper than {MAX_DEPTH} levels")
            stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
        return nodes

    def _check(self, nodes: list[ast.AST]) -> None:
        allowed = (ast.Expression, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call, ast.Name,
                   ast.Constant, ast.List, ast.Tuple, ast.Load, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd,
                   ast.In, ast.NotIn, *_BIN_OPS, *_COMPARE)
        after_in: set[int] = set()
        for child in nodes:
            if not isinstance(child, allowed):
                offset = getattr(child, "col_offset", 0)
                raise _error(self.text, offset, f"{type(child).__name__} is not allowed")
            if isinstance(child, ast.Call):
                if not isinstance(child.func, ast.Name) or child.func.id not in FUNCTIONS or child.keywords:
                    name = getattr(child.func, "id", "?")
                    raise _error(self.text, child.col_offset,
                                 f"unknown function {name!r} (known: {', '.join(sorted(FUNCTIONS))})")
            elif isinstance(child, ast.Constant):
                if not isinstance(child.value, (int, float, str, bool, type(None))):
                    raise _error(self.text, child.col_offset, "only numbers, text, True, False and None are allowed")
                try:
                    _check_int(child.value)
                    if isinstance(child.value, str):
                        _check_text_size(len(child.value))
                except _Limit as exc:
                    raise _error(self.text, child.col_offset, str(exc)) from None
            elif isinstance(child, ast.Compare):
                after_in.update(id(right) for op, right in zip(child.ops, child.comparators)
                                if isinstance(op, (ast.In, ast.NotIn)))
            elif isinstance(child, (ast.List, ast.Tuple)) and id(child) not in after_in:
                # Parents come first, so a list's Compare has been seen; lists in arithmetic could be repeated.
                raise _error(self.text, child.col_offset, "a list is allowed only after 'in', e.g. x in ['A', 'B']")

    def _fold(self, nodes: list[ast.AST]) -> None:
        """Compute the parts made of constants alone now, so their errors come at parse time."""
        empty = None
        for node in nodes:
            if isinstance(node, (ast.BinOp, ast.UnaryOp)) and _constant(node):
                empty = pd.DataFrame() if empty is None else empty
                self._eval(node, empty)
            elif isinstance(node, ast.Call) and node.func.id == "round" and len(node.args) == 2 and _constant(
                    node.args[1]):
                empty = pd.DataFrame() if empty is None else empty
                try:
                    _digits(self._eval(node.args[1], empty))
                except _Limit as exc:
                    raise _error(self.text, node.col_offset, str(exc)) from None

    def columns(self) -> set[str]:
        names = {n.id for n in ast.walk(self._tree) if isinstance(n, ast.Name)}
        called = {n.func.id for n in ast.walk(self._tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        return {self._names.get(name, name) for name in names - called}

    def evaluate(self, frame: pd.DataFrame) -> Any:
        return self._eval(self._tree.body, frame)

    def _eval(self, node: ast.AST, frame: pd.DataFrame) -> Any:
        if isinstance(node, ast.Constant):
            return _literal(node.value)
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
            left, right = _exact(self._eval(node.left, frame), self._eval(node.right, frame))
            try:
                return _BIN_OPS[type(node.op)](left, right)
            except _Limit as exc:
                raise _error(self.text, node.col_offset, str(exc)) from None
            except (ArithmeticError, TypeError, ValueError, NotImplementedError) as exc:
                # NotImplementedError: arrow has no kernel for it (% on decimal columns).
                raise _error(self.text, node.col_offset, f"cannot compute this ({type(exc).__name__}: {exc})") from None
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
                    right = [_meet(item, left) for item in right]
                    part = left.isin(right) if isinstance(left, pd.Series) else left in right
                    part = ~part if isinstance(op, ast.NotIn) else part
                else:
                    part = _COMPARE[type(op)](*_exact(left, right))
                if isinstance(part, pd.Series):
                    part = part.fillna(False).astype(bool)
                result = part if result is None else result & part
                left = right
            return result
        if isinstance(node, ast.Call):
            args = [self._eval(arg, frame) for arg in node.args]
            try:
                return FUNCTIONS[node.func.id](*args)
            except _Limit as exc:
                raise _error(self.text, node.col_offset, str(exc)) from None
            except TypeError as exc:
                raise _error(self.text, node.col_offset, f"wrong arguments for {node.func.id}(): {exc}") from None
        raise _error(self.text, getattr(node, "col_offset", 0), f"{type(node).__name__} is not allowed")


def _constant(node: ast.AST) -> bool:
    """Whether ``node`` is arithmetic on constants alone (no column, no function)."""
    return isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Constant)) and all(
        isinstance(n, (ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop)) for n in ast.walk(node))


def _as_bool(value: Any, frame: pd.DataFrame) -> Any:
    if isinstance(value, pd.Series):
        return value.fillna(False).astype(bool)
    return pd.Series(bool(value), index=frame.index)


def mask(text: str, frame: pd.DataFrame) -> pd.Series:
    """A boolean Series for a filter expression."""
    value = Expression(text).evaluate(frame)
    return _as_bool(value, frame)


def check_expression(text: str) -> str:
    """``text`` if it parses within the bounds; else ValueError (a parameter's 422 at submit)."""
    try:
        Expression(text)
    except ExpressionError as exc:
        raise ValueError(str(exc)) from None
    return text


# A parameter holding an expression: parsed and checked when the task is submitted (422), not when it runs.
ExpressionText = Annotated[str, AfterValidator(check_expression)]
