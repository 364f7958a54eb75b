"""The nodes' resource samples: one bucket per node and minute (`node_metrics`: a sum and a count per series, so a
minute shows the mean of its beats), kept for WINDOW."""

from __future__ import annotations

from typing import Any

from gateway.registry.store.db import Statement, Tables
from gateway.wire import SERIES, clean_sample

MINUTE = 60
WINDOW = 24 * 3600  # how long the registry keeps samples

_ADD_SAMPLE = (
    f"INSERT INTO node_metrics (node, minute, beats, {', '.join(f'{n}_sum, {n}_n' for n in SERIES)}) "
    f"VALUES (?, ?, 1, {', '.join('?' * (2 * len(SERIES)))}) ON CONFLICT (node, minute) DO UPDATE SET "
    "beats = node_metrics.beats + 1, "
    + ", ".join(f"{n}_sum = node_metrics.{n}_sum + excluded.{n}_sum, {n}_n = node_metrics.{n}_n + excluded.{n}_n"
                for n in SERIES))


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
