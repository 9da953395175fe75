"""Business days on the ANBIMA calendar (national holidays, Carnival Monday and Tuesday included)."""

from __future__ import annotations

import csv
import datetime as dt
from bisect import bisect_left, bisect_right
from functools import lru_cache
from pathlib import Path

HOLIDAYS_FILE = Path(__file__).resolve().parent / "data" / "anbima_holidays.csv"


@lru_cache(maxsize=1)
def holidays() -> tuple[dt.date, ...]:
    with open(HOLIDAYS_FILE, encoding="utf-8") as source:
        return tuple(sorted(dt.date.fromisoformat(row["date"]) for row in csv.DictReader(source)))


def _check_range(day: dt.date) -> None:
    known = holidays()
    if not known[0].year <= day.year <= known[-1].year:
        raise ValueError(f"{day:%d/%m/%Y} is outside the ANBIMA calendar ({known[0].year}-{known[-1].year})")


def is_business_day(day: dt.date) -> bool:
    _check_range(day)
    if day.weekday() >= 5:
        return False
    known = holidays()
    index = bisect_left(known, day)
    return not (index < len(known) and known[index] == day)


def add_business_days(day: dt.date, count: int) -> dt.date:
    """``count`` business days after ``day`` (before it when negative); 0 rolls back to a business day."""
    step = 1 if count > 0 else -1
    current = day
    if count == 0:
        while not is_business_day(current):
            current -= dt.timedelta(days=1)
        return current
    remaining = abs(count)
    while remaining:
        current += dt.timedelta(days=step)
        if is_business_day(current):
            remaining -= 1
    return current


def previous_business_day(day: dt.date) -> dt.date:
    return add_business_days(day, -1)


def business_days_between(start: dt.date, end: dt.date) -> int:
    """Business days after ``start`` up to and including ``end`` (0 when equal; negative if end < start)."""
    if end < start:
        return -business_days_between(end, start)
    _check_range(start)
    _check_range(end)
    days = (end - start).days
    weeks, extra = divmod(days, 7)
    weekdays = weeks * 5 + sum(1 for i in range(1, extra + 1) if (start + dt.timedelta(days=i)).weekday() < 5)
    known = holidays()
    off = bisect_right(known, end) - bisect_right(known, start)
    off -= sum(1 for h in known[bisect_right(known, start):bisect_right(known, end)] if h.weekday() >= 5)
    return weekdays - off
