"""Upgrade tasks (`upgrade_tasks`), their files (`upgrade_wheels`, kept in the database so that every replica serves
them: wheels whole, an OS bundle as a row without content and its bytes in pieces in `upgrade_chunks`) and the state
of each target node (`upgrade_nodes`)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from gateway.registry.store.db import Statement, Tables

TIME_COLUMNS = ("started_at", "finished_at")
PIECE = 4 << 20  # bytes of a file kept in pieces per row (what a reader of it holds at a time)


class UpgradeTables(Tables):
    async def create(self, task: str, version: str, selector: dict[str, Any], concurrency: int, max_failures: int,
                     deadline: float, workspace: str, created_by: str, wheels: Mapping[str, bytes],
                     targets: Sequence[str], status: str, reason: str, now: float,
                     bundle: tuple[str, Iterable[bytes]] | None = None) -> None:
        """Record a running task with its wheels, or its OS `bundle` (file name, its bytes in pieces of at most
        PIECE), and one row per target node (in `status`, for `reason`). The bundle's pieces are written first, one
        at a time, and removed again when the task is not recorded."""
        statements: list[Statement] = []
        if bundle is not None:
            name, pieces = bundle
            try:
                digest, size = await self._store_pieces(task, name, pieces)
            except BaseException:
                await self._drop_pieces(task)
                raise
            statements.append(("INSERT INTO upgrade_wheels VALUES (?, ?, ?, ?, ?)", (task, name, digest, size, "")))
        statements += [(
            "INSERT INTO upgrade_tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (task, version, json.dumps(selector), concurrency, max_failures, deadline, "running", workspace,
             created_by, now, None))]
        statements += [("INSERT INTO upgrade_wheels VALUES (?, ?, ?, ?, ?)",
                        (task, name, hashlib.sha256(content).hexdigest(), len(content),
                         base64.b64encode(content).decode())) for name, content in sorted(wheels.items())]
        statements += [("INSERT INTO upgrade_nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (task, node, position, status, reason, "", None, None, now))
                       for position, node in enumerate(targets)]
        try:
            await self.database.transaction(statements)
        except BaseException:
            if bundle is not None:
                await self._drop_pieces(task)
            raise

    async def _store_pieces(self, task: str, name: str, pieces: Iterable[bytes]) -> tuple[str, int]:
        """Write a file's pieces, hashing them on the way; its SHA-256 and size."""
        digest = hashlib.sha256()
        size = 0
        for seq, piece in enumerate(pieces):
            if len(piece) > PIECE:
                raise ValueError(f"a piece of {len(piece)} bytes, more than {PIECE}")
            await asyncio.to_thread(digest.update, piece)
            size += len(piece)
            await self.database.write("INSERT INTO upgrade_chunks VALUES (?, ?, ?, ?)", task, name, seq, bytes(piece))
        return digest.hexdigest(), size

    async def _drop_pieces(self, task: str) -> None:
        await asyncio.shield(self.database.write("DELETE FROM upgrade_chunks WHERE task=?", task))

    async def running(self, states: Sequence[str]) -> list[tuple[str, str, int, int, float, str]]:
        """(task, version, concurrency, max failures, deadline, state) of the tasks in one of `states` (the ones
        not finished yet), oldest first."""
        marks = ", ".join("?" for _ in states)
        return [(str(task), str(version), int(concurrency), int(failures), float(deadline), str(state))
                for task, version, concurrency, failures, deadline, state in await self.database.rows(
                    "SELECT id, version, concurrency, max_failures, deadline, state FROM upgrade_tasks "
                    f"WHERE state IN ({marks}) ORDER BY created_at", *states)]

    async def stop(self, task: str, stopping: str, waiting: str, cancelled: str, reason: str, now: float) -> None:
        """In one transaction: the task goes to `stopping` and its nodes still `waiting` to `cancelled`."""
        await self.database.transaction([
            ("UPDATE upgrade_tasks SET state=? WHERE id=?", (stopping, task)),
            ("UPDATE upgrade_nodes SET status=?, reason=?, updated_at=?, finished_at=? WHERE task=? AND status=?",
             (cancelled, reason, now, now, task, waiting))])

    async def node_states(self, task: str) -> list[tuple[str, str, float | None]]:
        """(node, status, updated at) of a task's nodes in their order."""
        return [(str(node), str(status), updated) for node, status, updated in await self.database.rows(
            "SELECT node, status, updated_at FROM upgrade_nodes WHERE task=? ORDER BY position", task)]

    async def move_on(self, task: str, changes: Sequence[tuple[str, str, str, Mapping[str, float]]],
                      outcome: str | None, now: float) -> None:
        """In one transaction: the new (status, reason) of some of a task's nodes, with the times they started or
        finished, and the task's outcome once every node is done."""
        statements: list[Statement] = []
        for node, status, reason, times in changes:
            unknown = set(times) - set(TIME_COLUMNS)
            if unknown:
                raise ValueError(f"not a time of an upgrade node: {', '.join(sorted(unknown))}")
            columns = "".join(f", {column}=?" for column in times)
            statements.append((f"UPDATE upgrade_nodes SET status=?, reason=?, updated_at=?{columns} WHERE task=? AND "
                               "node=?", (status, reason, now, *times.values(), task, node)))
        if outcome is not None:
            statements.append(("UPDATE upgrade_tasks SET state=?, finished_at=? WHERE id=?", (outcome, now, task)))
        if statements:
            await self.database.transaction(statements)

    async def report(self, task: str, node: str, status: str, reason: str, log: str, now: float, final: bool,
                     while_in: Sequence[str]) -> None:
        """A node's report of its upgrade, taken while its row is in one of the states `while_in`."""
        marks = ", ".join("?" for _ in while_in)
        await self.database.write(
            "UPDATE upgrade_nodes SET status=?, reason=?, log=?, updated_at=?, finished_at=? WHERE task=? AND "
            f"node=? AND status IN ({marks})", status, reason, log, now, now if final else None, task, node,
            *while_in)

    async def assignment(self, node: str, status: str) -> tuple[str, str, float] | None:
        """(task, version, deadline) of the task a node is in `status` of."""
        rows = await self.database.rows(
            "SELECT t.id, t.version, t.deadline FROM upgrade_nodes n JOIN upgrade_tasks t ON t.id = n.task "
            "WHERE n.node=? AND n.status=?", node, status)
        return (str(rows[0][0]), str(rows[0][1]), float(rows[0][2])) if rows else None

    async def wheels(self, task: str) -> list[tuple[str, str, int]]:
        """(file name, SHA-256, size) of a task's wheels, by name."""
        return [(str(name), str(digest), int(size)) for name, digest, size in await self.database.rows(
            "SELECT filename, sha256, size FROM upgrade_wheels WHERE task=? ORDER BY filename", task)]

    async def wheel(self, task: str, name: str) -> bytes | None:
        rows = await self.database.rows("SELECT content FROM upgrade_wheels WHERE task=? AND filename=?", task, name)
        return base64.b64decode(rows[0][0]) if rows else None

    async def content(self, task: str, name: str) -> AsyncIterator[bytes]:
        """A file of a task, a wheel whole or an OS bundle piece by piece (read one at a time); nothing when the task
        has no such file."""
        seqs = await self.database.rows(
            "SELECT seq FROM upgrade_chunks WHERE task=? AND filename=? ORDER BY seq", task, name)
        if not seqs:
            whole = await self.wheel(task, name)
            if whole is not None:
                yield whole
            return
        for (seq,) in seqs:
            rows = await self.database.rows(
                "SELECT content FROM upgrade_chunks WHERE task=? AND filename=? AND seq=?", task, name, seq)
            yield bytes(rows[0][0])

    async def is_target(self, task: str, node: str) -> bool:
        return bool(await self.database.rows("SELECT 1 FROM upgrade_nodes WHERE task=? AND node=?", task, node))

    async def tasks(self) -> list[tuple[str, str]]:
        """(task, workspace) of every task, oldest first."""
        return [(str(task), str(workspace)) for task, workspace in await self.database.rows(
            "SELECT id, workspace FROM upgrade_tasks ORDER BY created_at")]

    async def task(self, task: str) -> tuple[Any, ...] | None:
        """(version, selector, concurrency, max failures, deadline, state, workspace, created by, created at,
        finished at) of a task."""
        rows = await self.database.rows(
            "SELECT version, selector, concurrency, max_failures, deadline, state, workspace, created_by, created_at, "
            "finished_at FROM upgrade_tasks WHERE id=?", task)
        if not rows:
            return None
        version, selector, *rest = rows[0]
        return (version, json.loads(selector), *rest)

    async def task_nodes(self, task: str) -> list[tuple[Any, ...]]:
        """(node, status, reason, log, started at, finished at, updated at) of a task's nodes in their order."""
        return await self.database.rows(
            "SELECT node, status, reason, log, started_at, finished_at, updated_at FROM upgrade_nodes "
            "WHERE task=? ORDER BY position", task)
