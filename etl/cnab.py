"""Bank fixed-width files (CNAB 240, CNAB 400 and the CNAB-444 FIDC remittance) read by named layout.

A layout (``etl/data/cnab_layouts.json``, or a JSON file of the same shape given as ``layout_file``)
names the record types, each field's 1-based ``from``/``to`` positions as the layout manuals give
them, and its type (``money:cents`` implied cents, ``date:ddmmyy``, ``integer``, text by default).
Reading checks every line's length and record type, the sequence numbers and the trailer's record
count, and fails naming the line. Files are latin-1 with CRLF (LF accepted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from etl import columns
from etl.errors import DataError

LAYOUTS_FILE = Path(__file__).resolve().parent / "data" / "cnab_layouts.json"
CNAB_FORMATS = ("cnab240", "cnab400", "cnab444")


class CnabError(DataError):
    """A CNAB file does not follow its layout."""


@lru_cache(maxsize=1)
def bundled_layouts() -> dict[str, Any]:
    return json.loads(LAYOUTS_FILE.read_text(encoding="utf-8"))


def layout(name: str, layout_file: Path | None = None) -> dict[str, Any]:
    """The layout called ``name``: from ``layout_file`` when it defines it, else the bundled one."""
    known = dict(bundled_layouts())
    if layout_file is not None:
        try:
            known.update(json.loads(layout_file.read_text(encoding="utf-8-sig")))
        except (OSError, json.JSONDecodeError) as exc:
            raise CnabError(f"cannot read the layout file {layout_file.name}: {exc}") from None
    if name not in known:
        raise CnabError(f"there is no CNAB layout {name!r}; layouts: {', '.join(sorted(known))}")
    found = known[name]
    for key in ("record_length", "record_type", "records", "detail"):
        if key not in found:
            raise CnabError(f"layout {name!r} has no {key!r}")
    return found


@dataclass
class CnabFile:
    """What a CNAB file holds: the detail table (typed), the other records' fields, and what was checked."""

    layout: str
    detail: pd.DataFrame
    records: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    line_count: int = 0


def _slice(lines: pd.Series, spec: dict[str, Any]) -> pd.Series:
    return lines.str.slice(int(spec["from"]) - 1, int(spec["to"]))


def _fields(lines: pd.Series, fields: list[dict[str, Any]]) -> pd.DataFrame:
    table = pd.DataFrame({f["name"]: _slice(lines, f).str.strip() for f in fields}, index=lines.index)
    return table.astype("string")


def _typed(table: pd.DataFrame, fields: list[dict[str, Any]], name: str) -> tuple[pd.DataFrame, list[str]]:
    found = columns.Typing()
    for spec in fields:
        kind = spec.get("type", "text")
        if kind != "text":
            columns.apply_type(table, spec["name"], kind, name, found)
    return table, found.warnings


def read_lines(path: Path, encoding: str = "latin-1") -> pd.Series:
    """The file's lines (CRLF or LF), without a trailing empty line or a DOS end-of-file mark."""
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise CnabError(f"{path.name} is not {encoding} text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise CnabError(f"cannot read {path.name}: {exc.strerror}") from None
    lines = text.replace("\r\n", "\n").rstrip("\x1a").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return pd.Series(lines, dtype="string")


def read_cnab(path: Path, layout_name: str, layout_file: Path | None = None, encoding: str = "latin-1") -> CnabFile:
    """Read and check a CNAB file against its layout; CnabError naming the line when it does not follow it."""
    spec = layout(layout_name, layout_file)
    lines = read_lines(path, encoding)
    name = path.name
    if lines.empty:
        raise CnabError(f"{name} is empty")
    numbers = pd.Series(range(1, len(lines) + 1), index=lines.index)
    width = int(spec["record_length"])
    lengths = lines.str.len()
    wrong = lengths != width
    if wrong.any():
        first = int(wrong.to_numpy().argmax())
        raise CnabError(f"{name} line {first + 1} has {int(lengths.iloc[first])} characters; {layout_name} records "
                        f"have {width} (is this a {layout_name} file?)")
    kinds = _slice(lines, spec["record_type"])
    known = spec["records"]
    unknown = ~kinds.isin(list(known))
    if unknown.any():
        first = int(unknown.to_numpy().argmax())
        raise CnabError(f"{name} line {first + 1}: record type {kinds.iloc[first]!r} is not in the {layout_name} "
                        f"layout (types: {', '.join(k + ' ' + v['name'] for k, v in known.items())})")
    checks = [f"{len(lines)} lines of {width} characters"]
    count = spec.get("count")
    if count:
        trailer = kinds == count["record"]
        if not trailer.any():
            raise CnabError(f"{name} has no {known[count['record']]['name']} record (type {count['record']}); "
                            f"the last line is {len(lines)}")
        at = int(trailer.to_numpy().nonzero()[0][-1])
        stated = _slice(lines, count).iloc[at].strip()
        if not stated.isdigit() or int(stated) != len(lines):
            raise CnabError(f"{name} line {at + 1} ({known[count['record']]['name']}): it counts {stated!r} records "
                            f"but the file has {len(lines)} (positions {count['from']}-{count['to']})")
        checks.append(f"{known[count['record']]['name']} count {int(stated)} = lines")
    sequence = spec.get("sequence")
    if sequence:
        values = _slice(lines, sequence)
        expected = numbers.map(lambda n: f"{n:0{int(sequence['to']) - int(sequence['from']) + 1}d}")
        broken = values != expected
        if broken.any():
            first = int(broken.to_numpy().argmax())
            raise CnabError(f"{name} line {first + 1}: sequence number {values.iloc[first]!r} where "
                            f"{expected.iloc[first]!r} was expected (positions {sequence['from']}-{sequence['to']})")
        checks.append("sequence numbers 1.." + str(len(lines)))
    records: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, int] = {}
    warnings: list[str] = []
    detail_parts = []
    for kind, record in known.items():
        chosen = kinds == kind
        counts[record["name"]] = int(chosen.sum())
        if not chosen.any():
            continue
        rows = lines[chosen]
        if "segments" in record:
            table = _segments(rows, record, numbers[chosen], name)
        else:
            table = _fields(rows, record["fields"])
        fields = [f for part in record.get("segments", {"": record.get("fields", [])}).values() for f in part]
        table, found = _typed(table, [f for f in fields if f["name"] in table.columns], f"{name} {record['name']}")
        warnings += found
        if kind in spec["detail"]:
            # The file line of each title (of its first segment), to find it in the file.
            table.insert(0, "linha", table.pop("linha") if "segments" in record else numbers[chosen].to_numpy())
            detail_parts.append(table)
        else:
            records[record["name"]] = [{k: _plain(v) for k, v in row.items()} for row in table.to_dict("records")]
    detail = pd.concat(detail_parts, ignore_index=True) if detail_parts else pd.DataFrame()
    return CnabFile(layout_name, detail.reset_index(drop=True), records, counts, checks, warnings, len(lines))


def _segments(rows: pd.Series, record: dict[str, Any], numbers: pd.Series, name: str) -> pd.DataFrame:
    """Detail records split into segments (CNAB 240 P then Q): one row per title, segments side by side."""
    segment = _slice(rows, record["segment"])
    parts = []
    order = list(record["segments"])
    for letter, fields in record["segments"].items():
        chosen = segment == letter
        part = _fields(rows[chosen], fields).reset_index(drop=True)
        if not parts:
            part.insert(0, "linha", numbers[chosen].to_numpy())
        parts.append(part)
    _check_pairs(segment, numbers, order, name)
    return pd.concat(parts, axis=1)


def _check_pairs(segment: pd.Series, numbers: pd.Series, order: list[str], name: str) -> None:
    """Each title's segments on consecutive lines (P, then its Q on the next line): pairing by count
    alone would give a P without its Q the payer of a stray Q further on."""
    letter_at = dict(zip(numbers.to_numpy().tolist(), segment.to_numpy().tolist(), strict=True))
    firsts = numbers[segment == order[0]].to_numpy()

    def shown(line: int) -> str:
        return f"segment {letter_at[line]!r}" if line in letter_at else "not a detail segment"

    for offset, letter in enumerate(order[1:], start=1):
        lines = numbers[segment == letter].to_numpy()
        expected = set((firsts + offset).tolist())
        stray = [int(n) for n in lines if int(n) not in expected]
        alone = [int(n) for n in firsts if int(n) + offset not in set(lines.tolist())]
        problems = [(n, f"segment {letter} does not follow a segment {order[0]} (line {n - offset} is "
                        f"{shown(n - offset)})") for n in stray]
        problems += [(n, f"segment {order[0]} has no segment {letter} after it (line {n + offset} is "
                         f"{shown(n + offset)})") for n in alone]
        if problems:
            line, message = min(problems)
            raise CnabError(f"{name} line {line}: {message}")


def _plain(value: Any) -> Any:
    from etl.results import json_value

    return json_value(value)


def raw_table(path: Path, layout_name: str, layout_file: Path | None = None) -> pd.DataFrame:
    """The detail records as text cells under a header row (money as 1234.56, dates dd/mm/yyyy), for the control."""
    from etl import money

    found = read_cnab(path, layout_name, layout_file)
    detail = found.detail
    cells = {}
    for column in detail.columns:
        values = detail[column]
        if money.is_decimal(values):
            text = money.to_text(values, ".")
        elif pd.api.types.is_datetime64_any_dtype(values):
            text = values.dt.strftime("%d/%m/%Y").astype("string")
        else:
            text = values.astype("string")
        cells[column] = pd.concat([pd.Series([column], dtype="string"), text], ignore_index=True)
    frame = pd.DataFrame(cells)
    frame.columns = [f"c{i}" for i in range(frame.shape[1])]
    return frame
