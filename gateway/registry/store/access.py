"""Who may do what at the registry: workspaces in folders (`workspaces`), API tokens (`api_tokens`, only a hash of
each secret), registry users (`registry_users`, argon2 hashes) and the audit log (`audit`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.registry.store.db import Tables


class AccessTables(Tables):
    async def workspaces(self) -> dict[str, str]:
        """Every workspace with its folder."""
        return {str(name): str(folder) for name, folder in await self.database.rows(
            "SELECT name, folder FROM workspaces ORDER BY name")}

    async def add_workspace(self, name: str, folder: str, now: float) -> None:
        await self.database.write("INSERT INTO workspaces (name, folder, created_at) VALUES (?, ?, ?)", name, folder,
                                  now)

    # --- API tokens ---------------------------------------------------------------------------------------------

    async def add_api_token(self, token_id: str, secret_hash: str, role: str, scope: str, description: str,
                            now: float) -> None:
        await self.database.write(
            "INSERT INTO api_tokens (id, secret_hash, role, created_at, scope, description) VALUES (?, ?, ?, ?, ?, ?)",
            token_id, secret_hash, role, now, scope, description)

    async def api_token(self, token_id: str) -> tuple[str, str, str, float | None] | None:
        """(secret hash, role, scope, revoked at) of an API token."""
        rows = await self.database.rows("SELECT secret_hash, role, scope, revoked_at FROM api_tokens WHERE id=?",
                                        token_id)
        return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2]), rows[0][3]) if rows else None

    async def api_tokens(self) -> list[tuple[Any, ...]]:
        """(id, role, scope, description, created at, revoked at) of every API token, oldest first."""
        return await self.database.rows(
            "SELECT id, role, scope, description, created_at, revoked_at FROM api_tokens ORDER BY created_at")

    async def revoke_api_token(self, token_id: str, now: float) -> None:
        await self.database.write("UPDATE api_tokens SET revoked_at=? WHERE id=? AND revoked_at IS NULL", now,
                                  token_id)

    async def delete_api_token(self, token_id: str) -> None:
        await self.database.write("DELETE FROM api_tokens WHERE id=?", token_id)

    # --- registry users -----------------------------------------------------------------------------------------

    async def put_user(self, name: str, password_hash: str, role: str, scope: str, now: float) -> None:
        """Add a user, or change its password, role and scope."""
        await self.database.write(
            "INSERT INTO registry_users (name, password_hash, role, scope, created_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET password_hash=excluded.password_hash, role=excluded.role, "
            "scope=excluded.scope", name, password_hash, role, scope, now)

    async def delete_user(self, name: str) -> bool:
        """Whether there was such a user."""
        return bool(await self.database.write("DELETE FROM registry_users WHERE name=?", name))

    async def users(self) -> list[tuple[Any, ...]]:
        """(name, role, scope, created at) of every user, by name."""
        return await self.database.rows("SELECT name, role, scope, created_at FROM registry_users ORDER BY name")

    async def user(self, name: str) -> tuple[str, str, str] | None:
        """(password hash, role, scope) of a user."""
        rows = await self.database.rows("SELECT password_hash, role, scope FROM registry_users WHERE name=?", name)
        return (str(rows[0][0]), str(rows[0][1]), str(rows[0][2])) if rows else None

    # --- the audit log ------------------------------------------------------------------------------------------

    async def record(self, entry_id: str, at: float, actor: str, scope: str, action: str, target: str, outcome: str,
                     detail: str) -> None:
        await self.database.write(
            "INSERT INTO audit (id, at, actor, scope, action, object, outcome, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            entry_id, at, actor, scope, action, target, outcome, detail)

    async def entries_about(self, target: str, scopes: Sequence[str] | None, limit: int) -> list[tuple[Any, ...]]:
        """(at, actor, scope, action, object, outcome, detail) of the newest entries about one object (in `scopes`,
        or all), newest first."""
        where, args = ["object = ?"], [target]
        if scopes is not None:
            where.append(f"scope IN ({', '.join('?' for _ in scopes)})")
            args.extend(scopes)
        return await self.database.rows(
            f"SELECT at, actor, scope, action, object, outcome, detail FROM audit WHERE {' AND '.join(where)} "
            "ORDER BY at DESC, id DESC LIMIT ?", *args, limit)

    async def entries(self, before: float, scopes: Sequence[str] | None, limit: int) -> list[tuple[Any, ...]]:
        """(at, actor, scope, action, object, outcome, detail) of the newest entries before a time (in `scopes`, or
        all), newest first."""
        where = ["at < ?"]
        args: list[Any] = [before]
        if scopes is not None:
            where.append(f"scope IN ({', '.join('?' for _ in scopes)})")
            args.extend(scopes)
        return await self.database.rows(
            f"SELECT at, actor, scope, action, object, outcome, detail FROM audit WHERE {' AND '.join(where)} "
            "ORDER BY at DESC, id DESC LIMIT ?", *args, limit)
