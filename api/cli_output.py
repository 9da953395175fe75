"""What the command line prints: data on stdout; messages and the progress bar on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

BAR_WIDTH = 30


class Output:
    """Where results go: stdout (data), stderr (messages and the progress bar)."""

    def __init__(self, as_json: bool) -> None:
        self.json = as_json
        self.bar = not as_json and sys.stderr.isatty()
        self._bar_len = 0
        self._last: dict[str, Any] | None = None

    def data(self, value: Any) -> None:
        """A JSON document on stdout (ASCII-escaped with --json: safe through any Windows code page)."""
        self.clear_bar()
        if self.json:
            print(json.dumps(value, ensure_ascii=True, default=str), flush=True)
        else:
            print(json.dumps(value, ensure_ascii=False, indent=2, default=str), flush=True)

    def line(self, text: str) -> None:
        """A line on stdout; the progress bar, if shown, is redrawn below it."""
        shown = self._bar_len
        self.clear_bar()
        print(text, flush=True)
        if shown and self._last is not None:
            self.progress(self._last)

    def note(self, text: str) -> None:
        if not self.json:
            self.clear_bar()
            print(text, file=sys.stderr, flush=True)

    def progress(self, state: dict[str, Any]) -> None:
        if not self.bar:
            return
        self._last = state
        percent = float(state.get("progress") or 0)
        filled = round(BAR_WIDTH * percent / 100)
        text = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {percent:5.1f}% {state.get('status', '')}"
                f"  {state.get('message') or ''}")[:120]
        # \r and padding rather than ANSI codes: older Windows consoles print those literally.
        sys.stderr.write("\r" + text.ljust(self._bar_len))
        sys.stderr.flush()
        self._bar_len = len(text)

    def clear_bar(self) -> None:
        if self._bar_len:
            sys.stderr.write("\r" + " " * self._bar_len + "\r")
            sys.stderr.flush()
            self._bar_len = 0
