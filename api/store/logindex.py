"""Reading a task's log from line N without reading lines 1..N-1 again (``GET /logs?since=``)."""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from pathlib import Path

# Every STRIDE-th line start is remembered: a read seeks there and skips fewer than STRIDE lines.
STRIDE = 256
CHUNK_BYTES = 1 << 20
INDEXED_LOGS = 64


@dataclass
class _Index:
    marks: list[int] = field(default_factory=lambda: [0])  # byte offset where line k * STRIDE starts
    lines: int = 0  # complete lines (ending in a newline) indexed so far
    end: int = 0  # byte offset just after the last complete line indexed


class LogIndex:
    """Sparse line offsets of recently read logs (this process only: an optimisation, the file is the truth)."""

    def __init__(self) -> None:
        self._indexes: collections.OrderedDict[Path, _Index] = collections.OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: Path, since: int, limit: int, include_partial: bool) -> list[str]:
        """Lines ``since+1`` .. ``since+limit`` of ``path``; a last line without its newline (still being
        written) only with ``include_partial``."""
        try:
            log = open(path, "rb")
        except FileNotFoundError:
            return []
        with log:
            index = self._extend(path, log)
            mark = min(since // STRIDE, len(index.marks) - 1)
            log.seek(index.marks[mark])
            for _ in range(since - mark * STRIDE):
                if not log.readline().endswith(b"\n"):
                    return []
            lines: list[str] = []
            while len(lines) < limit:
                raw = log.readline()
                if not raw or (not raw.endswith(b"\n") and not include_partial):
                    break
                lines.append(raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            return lines

    def _extend(self, path: Path, log) -> _Index:
        with self._lock:
            index = self._indexes.pop(path, None)
            size = log.seek(0, 2)
            if index is None or size < index.end:  # new, or the file was replaced or truncated
                index = _Index()
            self._indexes[path] = index
            while len(self._indexes) > INDEXED_LOGS:
                self._indexes.popitem(last=False)
            log.seek(index.end)
            position = index.end
            while chunk := log.read(CHUNK_BYTES):
                start = 0
                while (newline := chunk.find(b"\n", start)) >= 0:
                    index.lines += 1
                    index.end = position + newline + 1
                    if index.lines % STRIDE == 0:
                        index.marks.append(index.end)
                    start = newline + 1
                position += len(chunk)
            return index
