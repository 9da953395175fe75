"""Break ageing across business days: what is new, what persists, what was resolved."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from etl.calendar import business_days_between, previous_business_day
from etl.datasets import write_parquet

HISTORY_COLUMNS = ["break_key", "run_date", "first_seen", "age_business_days", "state", "category", "break_type"]


def roll(breaks: pd.DataFrame, history_path: Path, run_date: dt.date) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Age today's breaks against the previous business day's; update the history file.

    ``breaks`` has break_key, category, break_type. Returns (today's rows with first_seen, age and
    state new/persisting, the breaks resolved since the previous business day). Re-running a date
    replaces that date's rows, so it is idempotent.
    """
    history = pd.read_parquet(history_path) if history_path.exists() else pd.DataFrame(columns=HISTORY_COLUMNS)
    if len(history):
        history["run_date"] = pd.to_datetime(history["run_date"]).dt.date
        history["first_seen"] = pd.to_datetime(history["first_seen"]).dt.date
    history = history[history["run_date"] != run_date]
    previous_day = previous_business_day(run_date)
    earlier = history[history["run_date"] < run_date]
    last_run = earlier["run_date"].max() if len(earlier) else None
    before = earlier[(earlier["run_date"] == last_run) & (earlier["state"] != "resolved")] if last_run else earlier
    first_seen = dict(zip(before["break_key"], before["first_seen"]))

    today = breaks[["break_key", "category", "break_type"]].copy()
    today["run_date"] = run_date
    today["first_seen"] = [first_seen.get(key, run_date) for key in today["break_key"]]
    today["state"] = ["persisting" if key in first_seen else "new" for key in today["break_key"]]
    today["age_business_days"] = [business_days_between(seen, run_date) for seen in today["first_seen"]]

    resolved = before[~before["break_key"].isin(set(today["break_key"]))].copy()
    resolved["run_date"] = run_date
    resolved["state"] = "resolved"
    resolved["age_business_days"] = [business_days_between(seen, run_date) for seen in resolved["first_seen"]]

    updated = pd.concat([history, today[HISTORY_COLUMNS], resolved[HISTORY_COLUMNS]], ignore_index=True)
    updated = updated.astype({"break_key": "string", "category": "string", "break_type": "string", "state": "string"})
    write_parquet(updated.astype({"run_date": "datetime64[us]", "first_seen": "datetime64[us]"}), history_path)
    today.attrs["previous_business_day"] = previous_day
    today.attrs["compared_with"] = last_run
    return today, resolved
