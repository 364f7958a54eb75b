"""The registry's file records on its store: a push to a group reaches the group's nodes, a node past the TTL is
offered the file no more, and edge → cloud files are kept by age and by total size (the oldest go first)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.errors import ConfigError, NotFound
from gateway.registry import access, files
from gateway.registry.filestore import DirectoryStore
from gateway.registry.store import RegistryStore


async def body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_push_to_a_group_and_its_ttl(tmp_path: Path) -> None:
    content = DirectoryStore(tmp_path / "files")
    caller = access.cli_caller()
    async with RegistryStore(tmp_path) as store:
        for name, site in (("gw-1", "north"), ("gw-2", "north"), ("gw-3", "south")):
            await store.add_node(name, "ab", {"site": site}, 10.0)
        await store.create_group("line-a", [], {"site": "north"})
        record = await files.create_to_edge(store, content, caller, body(b"recipe"), name="recipe.txt", nodes=[],
                                            group="line-a", path="recipes", ttl=60, content_type="text/plain",
                                            labels={"kind": "recipe"})
        assert [n["node"] for n in record["nodes"]] == ["gw-1", "gw-2"]
        assert record["sha256"] == hashlib.sha256(b"recipe").hexdigest() and record["size"] == 6
        assert [o["id"] for o in await store.files.offers("gw-1", record["created_at"])] == [record["id"]]
        assert await store.files.offers("gw-3", record["created_at"]) == []
        with pytest.raises(ConfigError, match="exactly one"):
            await files.create_to_edge(store, content, caller, body(b"x"), name="x", nodes=["gw-1"],
                                       group="line-a", path="", ttl=60, content_type="text/plain", labels={})
        with pytest.raises(NotFound, match="gw-9"):
            await files.create_to_edge(store, content, caller, body(b"x"), name="x", nodes=["gw-9"], group=None,
                                       path="", ttl=60, content_type="text/plain", labels={})
        with pytest.raises(ConfigError, match="sha256"):  # a body that is not the file announced: nothing kept
            await files.create_to_edge(store, content, caller, body(b"x"), name="x", nodes=["gw-1"], group=None,
                                       path="", ttl=60, content_type="text/plain", labels={}, sha256="0" * 64)
        assert len(await store.files.listing()) == 1
        assert sorted(p.name for p in (tmp_path / "files").rglob("*") if p.is_file()) == [record["id"]]
        # past its TTL the file is offered no more, and its nodes say `expired`
        later = record["expires_at"] + 1
        await files.apply_retention(store, content, files.Retention(), later)
        assert await store.files.offers("gw-1", later) == []
        assert {n["state"] for n in await store.files.targets(record["id"])} == {"expired"}


async def test_files_from_nodes_are_kept_by_age_and_by_size(tmp_path: Path) -> None:
    content = DirectoryStore(tmp_path / "files")
    async with RegistryStore(tmp_path) as store:
        ids = []
        for n, (done_at, size) in enumerate(((100.0, 40), (200.0, 30), (300.0, 20), (400.0, 10))):
            file_id = f"{n:032x}"
            ids.append(file_id)
            await content.append(file_id, 0, b"x" * size)
            await content.commit(file_id)
            await store.files.create({"id": file_id, "name": f"clip-{n}.mp4", "size": size, "sha256": "0" * 64,
                                      "content_type": "video/mp4", "labels": {}, "direction": files.FROM_EDGE,
                                      "path": "", "source_node": "gw-1", "targets": {}, "workspace": "default",
                                      "created_by": "node:gw-1", "created_at": done_at, "expires_at": None,
                                      "state": files.DONE, "done_at": done_at}, [], done_at)
        # older than 250 s at 460: the first two go; the 30 bytes left fit 100
        assert await files.apply_retention(store, content, files.Retention(max_age=250, max_bytes=100), 460) == 2
        assert [f["id"] for f in await store.files.listing()] == [ids[3], ids[2]]
        # at most 15 bytes: the oldest of the rest goes too
        assert await files.apply_retention(store, content, files.Retention(max_age=10_000, max_bytes=15), 450) == 1
        assert [f["id"] for f in await store.files.listing()] == [ids[3]]
        assert sorted(p.name for p in (tmp_path / "files" / "objects").iterdir()) == [ids[3]]
        audit = await store.database.rows("SELECT action, object FROM audit WHERE action='file.expire'")
        assert sorted(obj for _, obj in audit) == sorted(f"file/{i}" for i in ids[:3])
