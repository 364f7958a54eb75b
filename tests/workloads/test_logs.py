"""Workload log files: numbered lines, rotation, a cursor that survives rotation and reopening."""

from __future__ import annotations

import itertools
from pathlib import Path

from gateway.workloads.logs import WorkloadLog


def test_lines_rotate_and_the_cursor_follows_across_files_and_reopening(tmp_path: Path) -> None:
    log = WorkloadLog(tmp_path, max_bytes=4096, keep=3)
    for i in range(60):
        log.write("app-1-0", "stdout" if i % 2 else "stderr", f"line {i}")
    assert (tmp_path / "current.log.1").exists()
    first = log.read(after=0, limit=1000)
    assert [line.line for line in first] == [f"line {i}" for i in range(60)]
    cursor = first[40].seq
    assert [line.line for line in log.read(after=cursor)] == [f"line {i}" for i in range(41, 60)]
    log.close()

    reopened = WorkloadLog(tmp_path, max_bytes=4096, keep=3)
    assert reopened.seq == 60
    reopened.write("app-1-1", "stdout", "after the restart")
    assert [(line.seq, line.instance) for line in reopened.read(after=60)] == [(61, "app-1-1")]
    assert [line.line for line in reopened.read(tail=2)] == ["line 59", "after the restart"]
    assert [line.line for line in reopened.read(tail=5, instance="app-1-1")] == ["after the restart"]

    for i in range(400):  # far beyond what three files hold: the oldest are gone, the numbering goes on
        reopened.write("app-1-1", "stdout", f"more {i} " + "x" * 40)
    kept = reopened.read(after=0, limit=10_000)
    assert kept[-1].seq == 461 and kept[0].seq > 61
    assert [b.seq - a.seq for a, b in itertools.pairwise(kept)] == [1] * (len(kept) - 1)
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3 * 4096
    reopened.close()


def test_a_very_long_line_is_cut(tmp_path: Path) -> None:
    log = WorkloadLog(tmp_path)
    log.write("a", "stdout", "y" * 100_000)
    (line,) = log.read()
    assert len(line.line) < 20_000 and line.line.endswith("…")
    log.close()


def test_the_lines_of_a_pod_name_their_container_and_old_lines_read_as_before(tmp_path: Path) -> None:
    (tmp_path / "current.log").write_bytes(b'{"seq":1,"ts":1.0,"instance":"a-1-0","stream":"stdout","line":"old"}\n')
    log = WorkloadLog(tmp_path)
    log.write("a-1-0", "stdout", "from web", "web")
    log.write("a-1-0", "stderr", "from agent", "agent")
    log.write("a-1-0", "stdout", "no container")
    assert [(line.line, line.container) for line in log.read()] == [
        ("old", ""), ("from web", "web"), ("from agent", "agent"), ("no container", "")]
    assert [line.line for line in log.read(container="agent")] == ["from agent"]
    assert [line.line for line in log.read(instance="a-1-0", container="web", after=0)] == ["from web"]
    assert b'"container"' not in (tmp_path / "current.log").read_bytes().splitlines()[-1]  # as before pods
    log.close()
