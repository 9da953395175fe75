"""Regulatory XML reports (Fundos.NET: the FIDC monthly report, later the CDA) read into named tables.

Every element that holds values (leaf children) is a record; records at the same path form a table,
one row per occurrence, so repeated blocks (quota classes, overdue buckets) stay distinct rows and a
value tag repeated inside one block gets a suffix (``VL_2``). A layout names the tables by path
(``etl/data/xml_layouts.json``, overridable by a JSON file of the same shape); a block the layout
does not name is still returned under its path. Values with a decimal comma become exact decimals.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from etl import columns
from etl.errors import DataError

LAYOUTS_FILE = Path(__file__).resolve().parent / "data" / "xml_layouts.json"
MAX_BYTES = 200 * 1024 * 1024


class XmlReportError(DataError):
    """An XML report cannot be read."""


@lru_cache(maxsize=1)
def bundled_layouts() -> dict[str, Any]:
    return json.loads(LAYOUTS_FILE.read_text(encoding="utf-8"))


def layout(name: str, layout_file: Path | None = None) -> dict[str, Any]:
    known = dict(bundled_layouts())
    if layout_file is not None:
        try:
            known.update(json.loads(layout_file.read_text(encoding="utf-8-sig")))
        except (OSError, json.JSONDecodeError) as exc:
            raise XmlReportError(f"cannot read the layout file {layout_file.name}: {exc}") from None
    if name not in known:
        raise XmlReportError(f"there is no XML layout {name!r}; layouts: {', '.join(sorted(known))}")
    return known[name]


def _tag(element: ET.Element) -> str:
    return element.tag.rsplit("}", 1)[-1]


@dataclass
class Report:
    root: str
    tables: dict[str, pd.DataFrame]
    paths: dict[str, str]
    warnings: list[str]


def _records(root: ET.Element) -> dict[str, list[dict[str, str | None]]]:
    found: dict[str, list[dict[str, str | None]]] = defaultdict(list)

    def walk(element: ET.Element, path: list[str]) -> None:
        leaves = [c for c in element if len(c) == 0]
        if leaves or element.attrib:
            record: dict[str, str | None] = {f"@{k.rsplit('}', 1)[-1]}": v for k, v in element.attrib.items()}
            seen: dict[str, int] = defaultdict(int)
            for leaf in leaves:
                name = _tag(leaf)
                seen[name] += 1
                key = name if seen[name] == 1 else f"{name}_{seen[name]}"
                text = (leaf.text or "").strip()
                record[key] = text or None
            found["/".join(path) or _tag(root)].append(record)
        for child in element:
            if len(child):
                walk(child, path + [_tag(child)])

    walk(root, [])
    return found


def read_report(path: Path, layout_name: str, layout_file: Path | None = None) -> Report:
    """Read the report into tables named by the layout (others by their path), values typed."""
    spec = layout(layout_name, layout_file)
    if path.stat().st_size > MAX_BYTES:
        raise XmlReportError(f"{path.name} is larger than {MAX_BYTES // 1024 // 1024} MB")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise XmlReportError(f"{path.name} is not well-formed XML: {exc}") from None
    expected_root = spec.get("root")
    if expected_root and _tag(root) != expected_root:
        raise XmlReportError(f"{path.name} is a <{_tag(root)}> document; the {layout_name} layout reads "
                             f"<{expected_root}>")
    names = {table_path: name for name, table_path in spec.get("tables", {}).items()}
    tables: dict[str, pd.DataFrame] = {}
    paths: dict[str, str] = {}
    warnings: list[str] = []
    for table_path, rows in _records(root).items():
        name = names.get(table_path, table_path)
        frame = pd.DataFrame(rows, dtype="string")
        frame.insert(0, "record", pd.array(range(1, len(frame) + 1), dtype="Int64"))
        types = {c: t for c, t in spec.get("types", {}).get(name, {}).items() if c in frame.columns}
        frame, found = columns.type_frame(frame, types, f"{path.name} {name}", decimal_mark=",")
        warnings += found.warnings
        tables[name] = frame
        paths[name] = table_path
    missing = [name for name in spec.get("tables", {}) if name not in tables]
    if missing:
        warnings.append(f"{path.name}: no block for {', '.join(missing)} (the layout's paths: "
                        f"{', '.join(spec['tables'][m] for m in missing)})")
    return Report(_tag(root), tables, paths, warnings)
