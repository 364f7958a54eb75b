"""The nodes' resource samples: one bucket per node and minute (`node_metrics`: a sum and a count per series, so a
minute shows the mean of its beats), kept for WINDOW; and the same of every app instance the nodes report
(`app_metrics`: a bucket per node, minute, workload and instance)."""

from __future__ import annotations

from typing import Any

from gateway.registry.store.db import Statement, Tables
from gateway.wire import APP_SERIES, SERIES, AppFigures, clean_sample

MINUTE = 60
WINDOW = 24 * 3600  # how long the registry keeps samples

_ADD_SAMPLE = (
    f"INSERT INTO node_metrics (node, minute, beats, {', '.join(f'{n}_sum, {n}_n' for n in SERIES)}) "
    f"VALUES (?, ?, 1, {', '.join('?' * (2 * len(SERIES)))}) ON CONFLICT (node, minute) DO UPDATE SET "
    "beats = node_metrics.beats + 1, "
    + ", ".join(f"{n}_sum = node_metrics.{n}_sum + excluded.{n}_sum, {n}_n = node_metrics.{n}_n + excluded.{n}_n"
                for n in SERIES))


_FIGURE_COLUMNS = 5 + 2 * len(APP_SERIES)  # node, minute, workload, instance, beats, a sum and a count per figure
_FIGURES_ROW = f"({', '.join('?' * _FIGURE_COLUMNS)})"
_FIGURES_UPSERT = (
    " ON CONFLICT (node, minute, workload, instance) DO UPDATE SET beats = app_metrics.beats + excluded.beats, "
    + ", ".join(f"{n}_sum = app_metrics.{n}_sum + excluded.{n}_sum, {n}_n = app_metrics.{n}_n + excluded.{n}_n"
                for n in APP_SERIES))
FIGURES_PER_STATEMENT = 50  # rows of one INSERT: 800 parameters, under every SQLite's limit
PRUNE_EVERY = 10  # minutes between two deletions of a node's day-old app buckets


def figures_statements(node: str, figures: list[AppFigures] | None, now: float,
                       pruned: dict[str, int] | None = None) -> list[Statement]:
    """The statements adding a heartbeat's app figures to their instances' buckets of this minute, in as few
    INSERTs as they fit, and dropping the node's day-old buckets (at most every PRUNE_EVERY minutes per node when
    `pruned` keeps when that was last; an empty list, which a node without apps sends now and then, only drops)."""
    if figures is None:
        return []
    minute = int(now // MINUTE)
    rows: dict[tuple[str, str], list[Any]] = {}  # one row per instance: a statement may not update a row twice
    for report in figures:
        values: list[Any] = [node, minute, report.workload, report.instance, 1]
        for name in APP_SERIES:
            value = getattr(report, name)
            values += [value if value is not None else 0.0, 0 if value is None else 1]
        rows[(report.workload, report.instance)] = values
    ordered = list(rows.values())
    statements: list[Statement] = []
    for first in range(0, len(ordered), FIGURES_PER_STATEMENT):
        chunk = ordered[first:first + FIGURES_PER_STATEMENT]
        columns = ", ".join(f"{n}_sum, {n}_n" for n in APP_SERIES)
        statements.append((f"INSERT INTO app_metrics (node, minute, workload, instance, beats, {columns}) VALUES "
                           + ", ".join([_FIGURES_ROW] * len(chunk)) + _FIGURES_UPSERT,
                           [value for row in chunk for value in row]))
    if pruned is None or minute - pruned.get(node, 0) >= PRUNE_EVERY:
        statements.append(("DELETE FROM app_metrics WHERE node=? AND minute<?", (node, minute - WINDOW // MINUTE)))
        if pruned is not None:
            pruned[node] = minute
    return statements


def sample_statements(node: str, raw: Any, now: float) -> list[Statement]:
    """The statements adding a heartbeat's sample to the node's bucket of this minute and dropping old buckets."""
    sample = clean_sample(raw)
    if not sample:
        return []
    minute = int(now // MINUTE)
    values: list[Any] = [node, minute]
    for name in SERIES:
        value = sample.get(name)
        values += [value if value is not None else 0.0, 0 if value is None else 1]
    return [(_ADD_SAMPLE, values),
            ("DELETE FROM node_metrics WHERE node=? AND minute<?", (node, minute - WINDOW // MINUTE))]


class SampleTables(Tables):
    async def minutes(self, node: str, first: int, series: tuple[str, ...] = SERIES) -> list[tuple[Any, ...]]:
        """A node's buckets from minute `first` on, oldest first: (minute, sum, count, sum, count, …) for `series`."""
        unknown = [name for name in series if name not in SERIES]  # the names go into the statement
        if unknown:
            raise ValueError(f"unknown series {', '.join(unknown)}")
        columns = ", ".join(f"{name}_sum, {name}_n" for name in series)
        return await self.database.rows(
            f"SELECT minute, {columns} FROM node_metrics WHERE node=? AND minute>=? ORDER BY minute", node, first)

    async def app_minutes(self, first: int, *, node: str | None = None,
                          workload: str | None = None) -> list[tuple[Any, ...]]:
        """The app buckets from minute `first` on of one node or one workload (or both), oldest first:
        (node, workload, instance, minute, sum, count, sum, count, …) in the order of APP_SERIES."""
        columns = ", ".join(f"{name}_sum, {name}_n" for name in APP_SERIES)
        where, args = ["minute>=?"], list[Any]([first])
        if node is not None:
            where.append("node=?")
            args.append(node)
        if workload is not None:
            where.append("workload=?")
            args.append(workload)
        return await self.database.rows(
            f"SELECT node, workload, instance, minute, {columns} FROM app_metrics WHERE {' AND '.join(where)} "
            "ORDER BY minute", *args)
