"""Telling how a text file is written (encoding, separator) instead of guessing silently, and the
warnings a read deserves (one column from a multi-field file, a header that looks like data)."""

from __future__ import annotations

import re
from collections import Counter

SEPARATORS = (";", "\t", ",", "|")
SAMPLE_LINES = 30
_NUMBER_OR_DATE = re.compile(r"\s*(R\$\s*)?-?[\d.,]+%?\s*|\s*\d{2}/\d{2}/\d{2,4}\s*")


def decode(raw: bytes, encoding: str | None) -> tuple[str, str]:
    """The text and the encoding used: the one given, else UTF-8 (with or without BOM) when the bytes
    are valid UTF-8, else cp1252 (latin-1 for the bytes cp1252 leaves undefined)."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8"), "utf-8-sig"
    if encoding:
        return raw.decode(encoding), encoding
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), "cp1252"
    except UnicodeDecodeError:
        return raw.decode("latin-1"), "latin-1"


def _sample(text: str) -> list[str]:
    lines = []
    for line in text[:200_000].splitlines():
        if line.strip():
            lines.append(re.sub(r'"[^"]*"', '""', line))
        if len(lines) >= SAMPLE_LINES:
            break
    return lines


def separator(text: str) -> str:
    """The separator that splits the first lines into the same number (> 1) of fields most often;
    ';' when none does (the Brazilian default)."""
    lines = _sample(text)
    best, best_score = ";", 0.0
    for candidate in SEPARATORS:
        counts = Counter(line.count(candidate) for line in lines)
        fields, lines_agreeing = max(counts.items(), key=lambda item: (item[1], item[0])) if counts else (0, 0)
        if fields == 0:
            continue
        score = lines_agreeing / len(lines) + fields / 1000  # agreement first, then more fields
        if score > best_score + 1e-9:
            best, best_score = candidate, score
    return best


def looks_like_markup(text: str) -> str | None:
    head = text.lstrip()[:200].lower()
    if head.startswith("<?xml") or re.match(r"<[a-z_][\w:.-]*[\s>]", head):
        return "XML"
    if head.startswith("<!doctype html") or head.startswith("<html"):
        return "HTML"
    return None


def one_column_warning(text: str, chosen: str, columns: int) -> str | None:
    """A warning when the read gave one column but another separator splits the lines."""
    if columns > 1:
        return None
    better = separator(text)
    lines = _sample(text)
    if better != chosen and lines and sum(line.count(better) > 0 for line in lines) >= 0.8 * len(lines):
        name = {"\t": "TAB", ";": "';'", ",": "','", "|": "'|'"}[better]
        return f"the read gave one column, but the lines are split by {name}: set read.separator to {better!r}"
    return None


def header_warning(header: list[object]) -> str | None:
    """A warning when most header cells are numbers or dates (the first record taken as the header)."""
    cells = [str(c) for c in header if c is not None and str(c).strip() and str(c) != "nan"]
    data = [c for c in cells if _NUMBER_OR_DATE.fullmatch(c)]
    if cells and len(data) * 2 > len(cells):
        return (f"the header row looks like data ({', '.join(data[:3])}): the file may have no header "
                "(read.header_row: null) or it is on another row")
    return None
