"""Who may do what at the registry: folders (`folders`) and the workspaces in them (`workspaces`), custom roles
(`roles`, each a JSON list of permissions), API tokens (`api_tokens`, only a hash of each secret), registry users
(`registry_users`, argon2 hashes) and the audit log (`audit`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.registry.store.db import Statement, Tables


class AccessTables(Tables):
    async def workspaces(self) -> dict[str, str]:
        """Every workspace with its folder."""
        return {str(name): str(folder) for name, folder in await self.database.rows(
            "SELECT name, folder FROM workspaces ORDER BY name")}

    async def add_workspace(self, name: str, folder: str, now: float) -> None:
        """A workspace in a folder (made too when there is none of that name); KeyTaken when the name is taken."""
        await self.database.transaction([
            ("INSERT INTO folders (name, description, created_at) VALUES (?, '', ?) ON CONFLICT (name) DO NOTHING",
             (folder, now)),
            ("INSERT INTO workspaces (name, folder, created_at) VALUES (?, ?, ?)", (name, folder, now))])

    async def move_workspace(self, name: str, folder: str) -> bool:
        """Put a workspace in another (existing) folder; whether there was such a workspace."""
        return bool(await self.database.write(
            "UPDATE workspaces SET folder=? WHERE name=? AND EXISTS (SELECT 1 FROM folders WHERE name=?)", folder,
            name, folder))

    # --- folders ------------------------------------------------------------------------------------------------

    async def folders(self) -> dict[str, tuple[str, float]]:
        """Every folder with its description and creation time, by name."""
        return {str(name): (str(description), float(created)) for name, description, created in
                await self.database.rows("SELECT name, description, created_at FROM folders ORDER BY name")}

    async def add_folder(self, name: str, description: str, now: float) -> None:
        """KeyTaken when there is a folder of that name."""
        await self.database.transaction([
            ("INSERT INTO folders (name, description, created_at) VALUES (?, ?, ?)", (name, description, now))])

    async def delete_folder(self, name: str) -> bool:
        """Delete a folder that holds no workspace and that no user or valid API token is granted on; whether it
        went."""
        scope = f"folder:{name}"
        return bool(await self.database.write(
            "DELETE FROM folders WHERE name=? AND NOT EXISTS (SELECT 1 FROM workspaces WHERE folder=?) "
            "AND NOT EXISTS (SELECT 1 FROM registry_users WHERE scope=?) "
            "AND NOT EXISTS (SELECT 1 FROM api_tokens WHERE scope=? AND revoked_at IS NULL)", name, name, scope,
            scope))

    async def scope_holders(self, scope: str) -> tuple[list[str], list[str]]:
        """The users and the valid API tokens granted on a scope, by name and id."""
        users = await self.database.rows("SELECT name FROM registry_users WHERE scope=? ORDER BY name", scope)
        tokens = await self.database.rows(
            "SELECT id FROM api_tokens WHERE scope=? AND revoked_at IS NULL ORDER BY id", scope)
        return [str(u) for u, in users], [str(t) for t, in tokens]

    # --- custom roles -------------------------------------------------------------------------------------------

    async def roles(self) -> list[tuple[str, str, str, float, float]]:
        """(name, description, permissions as JSON, created at, updated at) of every custom role, by name."""
        return [(str(name), str(description), str(permissions), float(created), float(updated))
                for name, description, permissions, created, updated in await self.database.rows(
                    "SELECT name, description, permissions, created_at, updated_at FROM roles ORDER BY name")]

    async def role(self, name: str) -> tuple[str, str] | None:
        """(description, permissions as JSON) of a custom role."""
        rows = await self.database.rows("SELECT description, permissions FROM roles WHERE name=?", name)
        return (str(rows[0][0]), str(rows[0][1])) if rows else None

    async def add_role(self, name: str, description: str, permissions: str, now: float) -> None:
        """KeyTaken when there is a role of that name."""
        statement: Statement = ("INSERT INTO roles (name, description, permissions, created_at, updated_at) "
                                "VALUES (?, ?, ?, ?, ?)", (name, description, permissions, now, now))
        await self.database.transaction([statement])

    async def change_role(self, name: str, description: str, permissions: str, now: float) -> bool:
        """Whether there was such a role."""
        return bool(await self.database.write(
            "UPDATE roles SET description=?, permissions=?, updated_at=? WHERE name=?", description, permissions,
            now, name))

    async def delete_role(self, name: str) -> bool:
        """Delete a custom role that no user and no valid API token holds; whether it went."""
        return bool(await self.database.write(
            "DELETE FROM roles WHERE name=? AND NOT EXISTS (SELECT 1 FROM registry_users WHERE role=?) "
            "AND NOT EXISTS (SELECT 1 FROM api_tokens WHERE role=? AND revoked_at IS NULL)", name, name, name))

    async def role_holders(self, name: str) -> tuple[list[str], list[str]]:
        """The users and the valid API tokens that hold a role, by name and id."""
        users = await self.database.rows("SELECT name FROM registry_users WHERE role=? ORDER BY name", name)
        tokens = await self.database.rows(
            "SELECT id FROM api_tokens WHERE role=? AND revoked_at IS NULL ORDER BY id", name)
        return [str(u) for u, in users], [str(t) for t, in tokens]

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

    async def set_user_grant(self, name: str, role: str, scope: str) -> bool:
        """Give a user another role and scope; whether there was such a user."""
        return bool(await self.database.write("UPDATE registry_users SET role=?, scope=? WHERE name=?", role, scope,
                                              name))

    async def set_user_password(self, name: str, password_hash: str) -> bool:
        """Whether there was such a user."""
        return bool(await self.database.write("UPDATE registry_users SET password_hash=? WHERE name=?",
                                              password_hash, name))

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

    async def search(self, scopes: Sequence[str] | None, *, actor: str = "", action: str = "", scope: str = "",
                     since: float | None = None, until: float | None = None, limit: int = 50,
                     offset: int = 0) -> list[tuple[Any, ...]]:
        """(at, actor, scope, action, object, outcome, detail) of the entries (in `scopes`, or all) by an actor
        (`user:ann`, or `ann` for any kind of actor of that name), with an action starting with `action`, in one
        scope, from `since` up to `until`, newest first, a page of `limit` after `offset`."""
        where: list[str] = ["1=1"]
        args: list[Any] = []
        if scopes is not None:
            where.append(f"scope IN ({', '.join('?' for _ in scopes)})")
            args.extend(scopes)
        if actor:
            where.append("(actor = ? OR actor LIKE ? ESCAPE '\\')")
            args.extend([actor, "%:" + _like(actor)])
        if action:
            where.append("action LIKE ? ESCAPE '\\'")
            args.append(_like(action) + "%")
        if scope:
            where.append("scope = ?")
            args.append(scope)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        if until is not None:
            where.append("at < ?")
            args.append(until)
        return await self.database.rows(
            f"SELECT at, actor, scope, action, object, outcome, detail FROM audit WHERE {' AND '.join(where)} "
            "ORDER BY at DESC, id DESC LIMIT ? OFFSET ?", *args, limit, offset)


def _like(text: str) -> str:
    """`text` matched literally by LIKE … ESCAPE '\\'."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
