"""Users and API tokens (gateway/store/users.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.errors import NotFound
from gateway.store import Store, db_path
from gateway.web.auth import create_token


async def test_tokens_are_stored_hashed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        token = await create_token(store, "viewer", "ci")
    finally:
        await store.close()
    assert token.encode() not in db_path(tmp_path).read_bytes()


async def test_users_are_added_changed_listed_and_removed(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        assert not await store.users.has_any()
        await store.users.put("bob", "viewer", "hash-1")
        await store.users.put("alice", "operator", "hash-2")
        await store.users.put("bob", "admin", "hash-3")  # the same name: a new role and password
        assert await store.users.has_any()
        assert await store.users.get("bob") == ("admin", "hash-3")
        assert [(u.name, u.role) for u in await store.users.list_users()] == [("alice", "operator"), ("bob", "admin")]
        await store.users.delete("bob")
        assert await store.users.get("bob") is None
        with pytest.raises(NotFound, match="no user bob"):
            await store.users.delete("bob")
    finally:
        await store.close()


async def test_tokens_are_listed_newest_first_revoked_and_deleted(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        first = await store.users.add_token("h1", "viewer", "ci")
        second = await store.users.add_token("h2", "admin", "")
        assert [(t.id, t.role, t.revoked) for t in await store.users.list_tokens()] == [
            (second, "admin", False), (first, "viewer", False)]
        assert await store.users.token_role("h1") == (first, "viewer")
        await store.users.revoke_token(first)
        assert await store.users.token_role("h1") is None
        assert (await store.users.list_tokens())[1].revoked
        with pytest.raises(NotFound, match=f"no active token {first}"):
            await store.users.revoke_token(first)
        await store.users.delete_token("h2")
        assert [t.id for t in await store.users.list_tokens()] == [first]
    finally:
        await store.close()
