"""Users (a role and an argon2 password hash each) and API tokens (kept only as a hash, revocable)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.errors import NotFound
from gateway.store.db import Database


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


class Users:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def put(self, name: str, role: str, password_hash: str) -> None:
        """Add a user, or give an existing one this role and password."""
        await self._db.execute(
            "INSERT INTO users VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET role=excluded.role, "
            "password_hash=excluded.password_hash",
            (name, role, password_hash, time.time()),
        )

    async def get(self, name: str) -> tuple[str, str] | None:
        """(role, password hash) of a user; None when there is no such user."""
        rows = await self._db.rows("SELECT role, password_hash FROM users WHERE name = ?", (name,))
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    async def delete(self, name: str) -> None:
        """Remove a user: their sessions end at their next request."""
        if not await self._db.execute("DELETE FROM users WHERE name = ?", (name,)):
            raise NotFound(f"no user {name}")

    async def has_any(self) -> bool:
        return bool(await self._db.rows("SELECT 1 FROM users LIMIT 1"))

    async def list_users(self) -> list[UserRow]:
        rows = await self._db.rows("SELECT name, role, created_at FROM users ORDER BY name")
        return [UserRow(str(n), str(r), float(c)) for n, r, c in rows]

    # --- tokens -------------------------------------------------------------------------------------------------

    async def add_token(self, token_hash: str, role: str, description: str) -> int:
        async with self._db.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO tokens (token_hash, role, description, created_at) VALUES (?, ?, ?, ?)",
                (token_hash, role, description, time.time()),
            )
            return int(cursor.lastrowid or 0)

    async def token_role(self, token_hash: str) -> tuple[int, str] | None:
        """(id, role) of a token that is not revoked; None for any other."""
        rows = await self._db.rows("SELECT id, role FROM tokens WHERE token_hash = ? AND revoked = 0", (token_hash,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    async def list_tokens(self) -> list[TokenRow]:
        """Every token, the newest first."""
        rows = await self._db.rows("SELECT id, role, description, created_at, revoked FROM tokens ORDER BY id DESC")
        return [TokenRow(int(i), str(r), str(d), float(c), bool(v)) for i, r, d, c, v in rows]

    async def revoke_token(self, token_id: int) -> None:
        if not await self._db.rows("SELECT 1 FROM tokens WHERE id = ? AND revoked = 0", (token_id,)):
            raise NotFound(f"no active token {token_id}")
        await self._db.execute("UPDATE tokens SET revoked = 1 WHERE id = ?", (token_id,))

    async def delete_token(self, token_hash: str) -> None:
        """Forget a token altogether (one made for a check and no longer needed)."""
        await self._db.execute("DELETE FROM tokens WHERE token_hash = ?", (token_hash,))
