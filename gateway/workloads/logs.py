"""Workload logs: every instance's stdout and stderr as numbered lines in rotating files in the data dir.

Each line is one JSON object `{"seq", "ts", "instance", "stream", "line"}`; `seq` grows by one per line across
rotations and restarts of the gateway, so a reader follows the log with the last `seq` it saw as its cursor.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import IO, Any

import msgspec

MAX_BYTES = 1 << 20  # per file
KEEP_FILES = 3  # the current file and two rotated ones
MAX_LINE = 16 << 10


class LogLine(msgspec.Struct, omit_defaults=True):
    seq: int
    ts: float
    instance: str
    stream: str
    line: str
    container: str = ""  # the container of a pod the line came from


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(LogLine).decode


class WorkloadLog:
    """The log files of one workload: `<dir>/current.log`, rotated to `current.log.1`, `.2`."""

    def __init__(self, directory: Path, *, max_bytes: int = MAX_BYTES, keep: int = KEEP_FILES) -> None:
        self.directory = directory
        self.path = directory / "current.log"
        self.max_bytes = max_bytes
        self.keep = keep
        self._file: IO[bytes] | None = None
        self._size = 0
        self.seq = self._last_seq()

    def _files(self) -> list[Path]:
        """Oldest first."""
        rotated = [self.directory / f"current.log.{i}" for i in range(self.keep - 1, 0, -1)]
        return [p for p in (*rotated, self.path) if p.exists()]

    def _last_seq(self) -> int:
        for path in reversed(self._files()):
            lines = _read_lines(path)
            if lines:
                return lines[-1].seq
        return 0

    def write(self, instance: str, stream: str, line: str, container: str = "") -> None:
        if len(line) > MAX_LINE:
            line = line[:MAX_LINE] + "…"
        self.seq += 1
        data = _encode(LogLine(self.seq, round(time.time(), 3), instance, stream, line, container)) + b"\n"
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("ab")
            self._size = self._file.tell()
        if self._size + len(data) > self.max_bytes and self._size:
            self._rotate()
        assert self._file is not None
        self._file.write(data)
        self._file.flush()
        self._size += len(data)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        for i in range(self.keep - 1, 0, -1):
            older = self.directory / (f"current.log.{i - 1}" if i > 1 else "current.log")
            if older.exists():
                older.replace(self.directory / f"current.log.{i}")
        self._file = self.path.open("ab")
        self._size = 0

    def read(self, *, after: int | None = None, tail: int = 100, limit: int = 1000,
             instance: str | None = None, container: str | None = None) -> list[LogLine]:
        """Lines with seq > `after` (at most `limit`, oldest first), or without `after` the last `tail` lines; only
        those of one instance and of one container of a pod when they are named."""
        lines: list[LogLine] = []
        for path in self._files():
            lines.extend(_read_lines(path))
        if instance is not None:
            lines = [line for line in lines if line.instance == instance]
        if container is not None:
            lines = [line for line in lines if line.container == container]
        if after is None:
            return lines[-tail:] if tail > 0 else []
        return [line for line in lines if line.seq > after][:limit]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _read_lines(path: Path) -> list[LogLine]:
    lines: list[LogLine] = []
    with contextlib.suppress(OSError):
        for raw in path.read_bytes().splitlines():
            with contextlib.suppress(msgspec.DecodeError):
                lines.append(_decode(raw))
    return lines


def as_dict(line: LogLine) -> dict[str, Any]:
    return msgspec.structs.asdict(line)
