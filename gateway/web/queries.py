"""The SQL of the web UI: user and token lists, bucketed history for plots, UI settings, stored resources."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import msgspec

from gateway.errors import NotFound
from gateway.store import Store

SETTINGS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ui_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
    "updated_at REAL NOT NULL, updated_by TEXT NOT NULL)"
)


@dataclass(frozen=True)
class UserRow:
    name: str
    role: str
    created_at: float


@dataclass(frozen=True)
class TokenRow:
    id: int
    role: str
    description: str
    created_at: float
    revoked: bool


async def users(store: Store) -> list[UserRow]:
    rows = await store.rows("SELECT name, role, created_at FROM users ORDER BY name")
    return [UserRow(str(n), str(r), float(c)) for n, r, c in rows]


async def tokens(store: Store) -> list[TokenRow]:
    rows = await store.rows("SELECT id, role, description, created_at, revoked FROM tokens ORDER BY id DESC")
    return [TokenRow(int(i), str(r), str(d), float(c), bool(v)) for i, r, d, c, v in rows]


async def revoke_token(store: Store, token_id: int) -> None:
    if not await store.rows("SELECT 1 FROM tokens WHERE id = ? AND revoked = 0", (token_id,)):
        raise NotFound(f"no active token {token_id}")
    await store.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,))


async def history_buckets(store: Store, device: str, prop: str, window: float, buckets: int = 240
                          ) -> list[tuple[float, float, float, float]]:
    """(time, min, max, mean) of the numeric history of one property over the last `window` seconds."""
    now = time.time()
    return await store.history_buckets(device, prop, now - window, now, buckets)


async def get_settings(store: Store, prefix: str) -> dict[str, str]:
    await store.execute(SETTINGS_SCHEMA)
    rows = await store.rows("SELECT key, value FROM ui_settings WHERE key LIKE ? || '%'", (prefix,))
    return {str(k): str(v) for k, v in rows}


async def put_settings(store: Store, values: dict[str, str], actor: str) -> None:
    await store.execute(SETTINGS_SCHEMA)
    now = time.time()
    for key, value in values.items():
        await store.execute(
            "INSERT INTO ui_settings VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value, "
            "updated_at=excluded.updated_at, updated_by=excluded.updated_by",
            (key, value, now, actor),
        )


async def stored_document(store: Store, kind: str, namespace: str, name: str) -> tuple[dict[str, Any], str]:
    """A resource document as stored (a plain dict with its kind first) and its source."""
    rows = await store.rows("SELECT document, source FROM resources WHERE kind = ? AND namespace = ? AND name = ?",
                            (kind, namespace, name))
    if not rows:
        raise NotFound(f"no {kind} {namespace}/{name}")
    document = msgspec.json.decode(rows[0][0])
    if isinstance(document, dict):
        document = {"kind": kind, **{k: v for k, v in document.items() if k != "kind"}}
    return document, str(rows[0][1])


async def audit_page(store: Store, limit: int, before: int | None, actor: str = "") -> list[dict[str, Any]]:
    sql = "SELECT id, ts, actor, action, target, detail, address FROM audit WHERE 1=1"
    params: list[Any] = []
    if before is not None:
        sql += " AND id < ?"
        params.append(before)
    if actor:
        sql += " AND actor = ?"
        params.append(actor)
    rows = await store.rows(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
    keys = ("id", "ts", "actor", "action", "target", "detail", "address")
    return [dict(zip(keys, row, strict=True)) for row in rows]
