"""Resource documents kept in the store: those of the files as last started (to tell what changed since), and those
created through the UI, the API or the registry, which the files do not hold. A Secret's values are stored sealed
by the sealer the store was given: the runtime passes the node's `SecretBox`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from gateway.errors import NotFound, StoreError
from gateway.store.db import Database

SECRET = "Secret"


class DocumentSealer(Protocol):
    """Seals a document before it is stored and unseals it when read (a Secret's values; other kinds as they are)."""

    def seal_document(self, kind: str, document: bytes) -> bytes: ...

    def unseal_document(self, kind: str, document: str | bytes) -> Any: ...


class NoSecretKey:
    """The sealer of a store opened without the node's secrets key (tools such as `fieldgate user add`): every kind
    but Secret passes as it is, and a Secret is refused rather than written or read in plain."""

    def seal_document(self, kind: str, document: bytes) -> bytes:
        if kind == SECRET:
            raise StoreError("a Secret cannot be stored by a store opened without the node's secrets key")
        return document

    def unseal_document(self, kind: str, document: str | bytes) -> Any:
        if kind == SECRET:
            raise StoreError("a Secret cannot be read by a store opened without the node's secrets key")
        return msgspec.json.decode(document)


@dataclass(frozen=True)
class StoredResource:
    kind: str
    namespace: str
    name: str
    document: Any  # the raw document (decoded JSON), a Secret's values unsealed
    source: str  # file, local or registry


class Resources:
    def __init__(self, db: Database, sealer: DocumentSealer) -> None:
        self._db = db
        self._sealer = sealer

    async def replace(self, documents: Iterable[tuple[str, str, str, bytes]], source: str) -> None:
        """Every document of one source at once: (kind, namespace, name, JSON), those not among them removed."""
        now = time.time()
        rows = [(kind, ns, name, self._sealer.seal_document(kind, doc).decode(), source, now)
                for kind, ns, name, doc in documents]
        async with self._db.transaction() as db:
            await db.execute("DELETE FROM resources WHERE source = ?", (source,))
            await db.executemany("INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?)", rows)

    async def put(self, kind: str, namespace: str, name: str, document: bytes, source: str) -> None:
        await self._db.execute("INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?)",
                               (kind, namespace, name, self._sealer.seal_document(kind, document).decode(), source,
                                time.time()))

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        await self._db.execute("DELETE FROM resources WHERE kind=? AND namespace=? AND name=?",
                               (kind, namespace, name))

    async def stored(self, *sources: str) -> list[StoredResource]:
        """The documents of these sources (e.g. local and registry, to add to those of the files)."""
        marks = ", ".join("?" * len(sources))
        rows = await self._db.rows(
            f"SELECT kind, namespace, name, document, source FROM resources WHERE source IN ({marks})", sources)
        return [StoredResource(str(kind), str(ns), str(name), self._sealer.unseal_document(kind, doc), str(source))
                for kind, ns, name, doc, source in rows]

    async def get(self, kind: str, namespace: str, name: str) -> tuple[dict[str, Any], str]:
        """A document as stored (a plain dict with its kind first, a Secret's values left sealed) and its source."""
        rows = await self._db.rows("SELECT document, source FROM resources WHERE kind = ? AND namespace = ? AND "
                                   "name = ?", (kind, namespace, name))
        if not rows:
            raise NotFound(f"no {kind} {namespace}/{name}")
        document = msgspec.json.decode(rows[0][0])
        if isinstance(document, dict):
            document = {"kind": kind, **{k: v for k, v in document.items() if k != "kind"}}
        return document, str(rows[0][1])

    async def previous_desired(self) -> dict[tuple[str, str], Any]:
        """The desired values the Device documents had when last stored, by (device id, property): read at start,
        to tell whether a file's value changed since."""
        previous: dict[tuple[str, str], Any] = {}
        for ns, name, text in await self._db.rows("SELECT namespace, name, document FROM resources "
                                                  "WHERE kind='Device'"):
            with contextlib.suppress(msgspec.DecodeError, AttributeError):
                for prop in msgspec.json.decode(text).get("properties", []):
                    if prop.get("desired") is not None:
                        previous[(f"{ns}/{name}", prop["name"])] = prop["desired"]
        return previous
