"""The documents applied at the registry (`documents`: one per kind, namespace and name, in a workspace, a Device
or Workload with the node it is meant for) and the kept versions of some of them (`document_versions`)."""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from typing import Any

from gateway.registry.store.db import NODES_CHANNEL, Statement, Tables, nodes_payload

Document = tuple[str, str, str, str | None, bytes]  # kind, namespace, name, node, JSON


def of_kinds_statement(kinds: Sequence[str], namespace: str | None = None) -> Statement:
    """The query of DocumentTables.of_kinds, for Database.reads; of_kinds_rows makes its rows."""
    marks = ", ".join("?" for _ in kinds)
    return (f"SELECT kind, namespace, name, document, workspace FROM documents WHERE kind IN ({marks})"
            + (" AND namespace=?" if namespace is not None else "") + " ORDER BY kind, namespace, name",
            (*kinds, *([namespace] if namespace is not None else [])))


def of_kinds_rows(rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, str, str, str, str]]:
    return [(str(k), str(ns), str(n), str(doc), str(ws)) for k, ns, n, doc, ws in rows]


def node_devices_statement(node: str) -> Statement:
    """The query of DocumentTables.node_devices (the JSON of the Devices meant for a node), for Database.reads."""
    return "SELECT document FROM documents WHERE kind='Device' AND node=? ORDER BY namespace, name", (node,)


class DocumentTables(Tables):
    async def put(self, documents: Sequence[Document], workspace: str, also: Sequence[Statement] = (),
                  concerned: Collection[str] | None = None) -> None:
        """Store documents of a workspace, replacing those with the same key, and run the statements `also` in the
        same transaction; the channels of the nodes `concerned` look again (None: every node's)."""
        now = time.time()
        await self.database.transaction([*also, *((
            "INSERT INTO documents (kind, namespace, name, node, document, updated_at, workspace) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) DO UPDATE SET "
            "node=excluded.node, document=excluded.document, updated_at=excluded.updated_at, "
            "workspace=excluded.workspace",
            (kind, ns, name, node, body.decode(), now, workspace)) for kind, ns, name, node, body in documents)])
        await self.database.notify(NODES_CHANNEL, nodes_payload(concerned, documents=True))

    async def fingerprint(self) -> str:
        """Changes whenever a document is stored or deleted (for the channel's sweep)."""
        [(count, updated)] = await self.database.rows("SELECT COUNT(*), MAX(updated_at) FROM documents")
        return f"{count}:{updated}"

    async def get(self, kind: str, namespace: str, name: str) -> str | None:
        """A document's JSON; None when the registry has no such document."""
        rows = await self.database.rows("SELECT document FROM documents WHERE kind=? AND namespace=? AND name=?",
                                        kind, namespace, name)
        return str(rows[0][0]) if rows else None

    async def workspace(self, kind: str, namespace: str, name: str) -> str | None:
        rows = await self.database.rows("SELECT workspace FROM documents WHERE kind=? AND namespace=? AND name=?",
                                        kind, namespace, name)
        return str(rows[0][0]) if rows else None

    async def delete(self, kind: str, namespace: str, name: str, concerned: Collection[str] | None = None) -> None:
        """Forget a document and its kept versions; the channels of the nodes `concerned` look again (None: every
        node's)."""
        await self.database.transaction([
            (f"DELETE FROM {table} WHERE kind=? AND namespace=? AND name=?", (kind, namespace, name))
            for table in ("documents", "document_versions")])
        await self.database.notify(NODES_CHANNEL, nodes_payload(concerned, documents=True))

    async def stored(self, kind: str, namespace: str, name: str) -> tuple[str | None, str, str] | None:
        """(node, JSON, workspace) of a stored document."""
        rows = await self.database.rows("SELECT node, document, workspace FROM documents WHERE kind=? AND "
                                        "namespace=? AND name=?", kind, namespace, name)
        return (None if rows[0][0] is None else str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    async def devices_in(self, namespace: str) -> list[tuple[str, str]]:
        """(node, JSON) of the Devices of a namespace meant for a node."""
        return [(str(node), str(document)) for node, document in await self.database.rows(
            "SELECT node, document FROM documents WHERE kind='Device' AND namespace=? AND node IS NOT NULL",
            namespace)]

    async def listing(self, kind: str | None = None) -> list[tuple[Any, ...]]:
        """(kind, namespace, name, node, workspace, JSON, updated at) of every document (of one kind)."""
        return await self.database.rows(
            "SELECT kind, namespace, name, node, workspace, document, updated_at FROM documents "
            + ("WHERE kind=? " if kind else "") + "ORDER BY kind, namespace, name", *([kind] if kind else []))

    async def of_kinds(self, kinds: Sequence[str],
                       namespace: str | None = None) -> list[tuple[str, str, str, str, str]]:
        """(kind, namespace, name, JSON, workspace) of the documents of these kinds (in one namespace)."""
        sql, args = of_kinds_statement(kinds, namespace)
        return of_kinds_rows(await self.database.rows(sql, *args))

    async def workspaces(self) -> dict[tuple[str, str, str], str]:
        """The workspace of every document by (kind, namespace, name)."""
        return {(kind, ns, name): str(ws) for kind, ns, name, ws in await self.database.rows(
            "SELECT kind, namespace, name, workspace FROM documents")}

    async def placed_devices(self, node: str | None = None, namespace: str | None = None,
                             name: str | None = None) -> list[tuple[str, str, str]]:
        """(node, namespace, name) of the Devices applied at the registry for a node."""
        where, args = ["kind='Device'", "node IS NOT NULL"], []
        for column, value in (("node", node), ("namespace", namespace), ("name", name)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        return [(str(n), str(ns), str(nm)) for n, ns, nm in await self.database.rows(
            f"SELECT node, namespace, name FROM documents WHERE {' AND '.join(where)} ORDER BY node, namespace, name",
            *args)]

    async def node_devices(self, node: str) -> list[str]:
        """The JSON of the Devices meant for a node."""
        sql, args = node_devices_statement(node)
        return [str(row[0]) for row in await self.database.rows(sql, *args)]

    async def models(self) -> list[tuple[str, str, str]]:
        """(namespace, name, JSON) of every DeviceModel."""
        return [(str(ns), str(name), str(doc)) for ns, name, doc in await self.database.rows(
            "SELECT namespace, name, document FROM documents WHERE kind='DeviceModel' ORDER BY namespace, name")]

    # --- versions -----------------------------------------------------------------------------------------------

    async def latest_version(self, kind: str, namespace: str, name: str) -> tuple[int, str] | None:
        """(number, JSON) of a document's newest kept version."""
        rows = await self.database.rows("SELECT version, document FROM document_versions WHERE kind=? AND "
                                        "namespace=? AND name=? ORDER BY version DESC LIMIT 1", kind, namespace, name)
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    async def version_statements(self, documents: Sequence[Document], kinds: Sequence[str], keep: int, actor: str,
                                 note: str = "") -> list[Statement]:
        """The statements that keep the new versions of the documents of `kinds` an apply changes (the newest
        `keep` of each); a document stored before versions were kept gets its old spec as version 1 first."""
        statements: list[Statement] = []
        now = time.time()
        for kind, namespace, name, _, body in documents:
            if kind not in kinds:
                continue
            text = body.decode()
            latest = await self.latest_version(kind, namespace, name)
            if latest is not None and latest[1] == text:
                continue
            number = latest[0] if latest is not None else 0
            if latest is None:
                stored = await self.database.rows("SELECT document, updated_at FROM documents WHERE kind=? AND "
                                                  "namespace=? AND name=?", kind, namespace, name)
                if stored and stored[0][0] == text:
                    continue
                if stored:  # applied before versions were kept: its spec becomes version 1
                    number = 1
                    statements.append(("INSERT INTO document_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                       (kind, namespace, name, 1, stored[0][0], stored[0][1], "",
                                        "applied before versions were kept")))
            number += 1
            statements += [("INSERT INTO document_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            (kind, namespace, name, number, text, now, actor, note)),
                           ("DELETE FROM document_versions WHERE kind=? AND namespace=? AND name=? AND version <= ?",
                            (kind, namespace, name, number - keep))]
        return statements

    async def versions(self, kind: str, namespace: str, name: str) -> list[tuple[int, str, float, str, str]]:
        """(number, JSON, created at, actor, note) of a document's kept versions, oldest first."""
        return [(int(number), str(document), created, str(actor), str(note))
                for number, document, created, actor, note in await self.database.rows(
                    "SELECT version, document, created_at, actor, note FROM document_versions WHERE kind=? AND "
                    "namespace=? AND name=? ORDER BY version", kind, namespace, name)]

    async def version(self, kind: str, namespace: str, name: str, number: int) -> str | None:
        """The JSON of one kept version."""
        rows = await self.database.rows("SELECT document FROM document_versions WHERE kind=? AND namespace=? AND "
                                        "name=? AND version=?", kind, namespace, name, number)
        return str(rows[0][0]) if rows else None
