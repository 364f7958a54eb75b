"""The registry's SQLite store: join tokens, nodes, revoked certificates and the documents meant for nodes."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import msgspec

from gateway.errors import AuthError, NotFound, StoreError

SCHEMA = """
CREATE TABLE IF NOT EXISTS join_tokens (id TEXT PRIMARY KEY, secret_hash TEXT NOT NULL, expires_at REAL NOT NULL,
    max_uses INTEGER NOT NULL, uses INTEGER NOT NULL DEFAULT 0, revoked INTEGER NOT NULL DEFAULT 0,
    labels TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, serial TEXT NOT NULL, labels TEXT NOT NULL,
    joined_at REAL NOT NULL, last_heartbeat REAL, interval REAL NOT NULL, info TEXT NOT NULL DEFAULT '{}');
CREATE TABLE IF NOT EXISTS revoked_certificates (serial TEXT PRIMARY KEY, node TEXT NOT NULL, revoked_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS documents (kind TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,
    node TEXT, document TEXT NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (kind, namespace, name));
"""
OFFLINE_AFTER = 3  # heartbeat intervals without a heartbeat


class TokenRefused(AuthError):
    """A join token that cannot be used; the message is the one-word reason."""


class RegistryStore:
    """`async with RegistryStore(data_dir) as store:`; every statement has the connection's busy timeout."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "registry.db"
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> RegistryStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = await aiosqlite.connect(self.path, timeout=5.0)
            await self._db.execute("PRAGMA journal_mode=WAL")
            await self._db.executescript(SCHEMA)
            await self._db.commit()
        except Exception as exc:
            raise StoreError(f"{self.path}: cannot open the registry database: {exc}") from exc
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the registry store is not open")
        return self._db

    async def _rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        async with self.db.execute(sql, args) as cursor:
            return [tuple(row) for row in await cursor.fetchall()]

    async def _write(self, sql: str, *args: Any) -> int:
        cursor = await self.db.execute(sql, args)
        await self.db.commit()
        return int(cursor.rowcount)

    # --- join tokens ----------------------------------------------------------------------------------------------

    async def create_token(self, ttl: float, max_uses: int, labels: dict[str, str]) -> tuple[str, str]:
        """(id, secret) of a new join token; only a hash of the secret is kept."""
        token_id, secret = secrets.token_hex(4), secrets.token_urlsafe(24)
        now = time.time()
        await self._write("INSERT INTO join_tokens (id, secret_hash, expires_at, max_uses, labels, created_at) "
                          "VALUES (?, ?, ?, ?, ?, ?)", token_id, _hash(secret), now + ttl, max_uses,
                          json.dumps(labels), now)
        return token_id, secret

    async def revoke_token(self, token_id: str) -> None:
        if not await self._write("UPDATE join_tokens SET revoked=1 WHERE id=?", token_id):
            raise NotFound(f"no join token {token_id}")

    async def use_token(self, token_id: str, secret: str) -> dict[str, str]:
        """Count one use of a token and return its labels; raise TokenRefused with the reason."""
        rows = await self._rows("SELECT secret_hash, expires_at, max_uses, uses, revoked, labels FROM join_tokens "
                                "WHERE id=?", token_id)
        if not rows or not hmac.compare_digest(rows[0][0], _hash(secret)):
            raise TokenRefused("unknown")
        _, expires_at, max_uses, uses, revoked, labels = rows[0]
        if revoked:
            raise TokenRefused("revoked")
        if expires_at < time.time():
            raise TokenRefused("expired")
        if uses >= max_uses:
            raise TokenRefused("used up")
        # the WHERE clause keeps two joins at once from both taking the last use
        if not await self._write("UPDATE join_tokens SET uses=uses+1 WHERE id=? AND uses < max_uses", token_id):
            raise TokenRefused("used up")
        return dict(json.loads(labels))

    # --- nodes ------------------------------------------------------------------------------------------------

    async def node_names(self) -> set[str]:
        return {row[0] for row in await self._rows("SELECT name FROM nodes")}

    async def add_node(self, name: str, serial: str, labels: dict[str, str], interval: float) -> None:
        await self._write("INSERT INTO nodes (name, serial, labels, joined_at, interval) VALUES (?, ?, ?, ?, ?)",
                          name, serial, json.dumps(labels), time.time(), interval)

    async def check_certificate(self, name: str, serial: str) -> None:
        """Raise AuthError unless the certificate is the current, unrevoked one of a known node."""
        if await self._rows("SELECT 1 FROM revoked_certificates WHERE serial=?", serial):
            raise AuthError("certificate revoked")
        rows = await self._rows("SELECT serial FROM nodes WHERE name=?", name)
        if not rows or rows[0][0] != serial:
            raise AuthError("unknown node certificate")

    async def heartbeat(self, name: str, info: dict[str, Any]) -> float:
        """Record a heartbeat; returns the node's heartbeat interval."""
        await self._write("UPDATE nodes SET last_heartbeat=?, info=? WHERE name=?", time.time(), json.dumps(info),
                          name)
        rows = await self._rows("SELECT interval FROM nodes WHERE name=?", name)
        return float(rows[0][0]) if rows else 0.0

    async def remove_node(self, name: str) -> None:
        """Forget a node and revoke its certificate: the registry refuses it from now on."""
        rows = await self._rows("SELECT serial FROM nodes WHERE name=?", name)
        if not rows:
            raise NotFound(f"no node {name}")
        await self.db.execute("INSERT OR IGNORE INTO revoked_certificates VALUES (?, ?, ?)", (rows[0][0], name,
                                                                                              time.time()))
        await self.db.execute("DELETE FROM nodes WHERE name=?", (name,))
        await self.db.commit()

    async def nodes(self) -> list[dict[str, Any]]:
        """Every node with its status (`healthy`, `offline`, `joined`) and the reason for it."""
        now = time.time()
        result = []
        for name, labels, joined_at, last, interval, info in await self._rows(
                "SELECT name, labels, joined_at, last_heartbeat, interval, info FROM nodes ORDER BY name"):
            if last is None:
                status, reason = "joined", "no heartbeat yet"
            elif now - last > OFFLINE_AFTER * interval:
                status, reason = "offline", f"no heartbeat for {now - last:.0f}s"
            else:
                status, reason = "healthy", f"last heartbeat {now - last:.1f}s ago"
            details = json.loads(info)
            result.append({"name": name, "status": status, "reason": reason, "version": details.get("version"),
                           "last_heartbeat": last, "joined_at": joined_at, "labels": json.loads(labels),
                           "info": details})
        return result

    # --- documents --------------------------------------------------------------------------------------------

    async def put_documents(self, documents: list[tuple[str, str, str, str | None, bytes]]) -> None:
        """Store (kind, namespace, name, node, JSON) documents, replacing those with the same key."""
        now = time.time()
        await self.db.executemany(
            "INSERT INTO documents VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (kind, namespace, name) DO UPDATE SET "
            "node=excluded.node, document=excluded.document, updated_at=excluded.updated_at",
            [(kind, ns, name, node, body.decode(), now) for kind, ns, name, node, body in documents])
        await self.db.commit()

    async def node_documents(self, node: str) -> tuple[str, list[dict[str, Any]]]:
        """(resource version, documents) meant for a node: its devices and the models they use."""
        devices = [json.loads(row[0]) for row in await self._rows(
            "SELECT document FROM documents WHERE kind='Device' AND node=? ORDER BY namespace, name", node)]
        wanted = {(d.get("namespace", "default"), d["model"]) for d in devices if d.get("model")}
        models = [json.loads(doc) for ns, name, doc in await self._rows(
            "SELECT namespace, name, document FROM documents WHERE kind='DeviceModel' ORDER BY namespace, name")
            if (ns, name) in wanted]
        documents = models + devices
        version = hashlib.sha256(msgspec.json.encode(documents)).hexdigest()[:16]
        return version, documents


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()

