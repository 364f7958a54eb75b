"""Resource documents in the store (gateway/store/resources.py): sources, the desired values of the last start, and
Secret documents sealed by the sealer the store is given."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from gateway.errors import NotFound, StoreError
from gateway.store import Store
from gateway.workloads.secrets import SecretBox

SECRET = msgspec.json.encode({"name": "db", "data": {"password": "pl41n-s3cret"}})


def database_bytes(data_dir: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(data_dir.glob("fieldgate.db*")))


def device(name: str, **desired: float) -> bytes:
    return msgspec.json.encode({"name": name, "model": "m", "properties": [
        {"name": prop, "desired": value} for prop, value in desired.items()] + [{"name": "plain"}]})


async def test_documents_by_source_and_the_desired_values_of_the_last_start(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        await store.resources.replace([("Device", "default", "a", device("a", setpoint=21.5)),
                                       ("Device", "default", "b", device("b"))], source="file")
        await store.resources.put("Device", "plant", "c", device("c", speed=3), "local")
        await store.resources.put("Route", "default", "r", b'{"name": "r"}', "registry")
        assert await store.resources.previous_desired() == {("default/a", "setpoint"): 21.5,
                                                            ("plant/c", "speed"): 3}
        stored = await store.resources.stored("local", "registry")
        assert sorted((r.kind, r.namespace, r.name, r.source) for r in stored) == [
            ("Device", "plant", "c", "local"), ("Route", "default", "r", "registry")]
        assert next(r for r in stored if r.kind == "Route").document == {"name": "r"}
        document, source = await store.resources.get("Device", "default", "a")
        assert next(iter(document)) == "kind" and document["name"] == "a" and source == "file"

        await store.resources.replace([("Device", "default", "b", device("b"))], source="file")  # a is gone
        assert [r.name for r in await store.resources.stored("file")] == ["b"]
        await store.resources.delete("Device", "plant", "c")
        with pytest.raises(NotFound, match="no Device plant/c"):
            await store.resources.get("Device", "plant", "c")
    finally:
        await store.close()


async def test_a_secret_is_sealed_by_the_box_the_store_is_given(tmp_path: Path) -> None:
    store = Store(tmp_path, secrets=SecretBox(tmp_path))
    await store.open()
    try:
        await store.resources.put("Secret", "default", "db", SECRET, "local")
        (stored,) = await store.resources.stored("local")
        assert stored.document["data"] == {"password": "pl41n-s3cret"}
    finally:
        await store.close()
    files = database_bytes(tmp_path)
    assert b"fernet:" in files and b"pl41n-s3cret" not in files


async def test_a_store_without_the_secrets_key_refuses_secrets(tmp_path: Path) -> None:
    """Tools that open the store without the node's key (`fieldgate user add`) neither write nor read a Secret in
    plain; every other kind passes."""
    sealed = Store(tmp_path, secrets=SecretBox(tmp_path))
    await sealed.open()
    await sealed.resources.put("Secret", "default", "db", SECRET, "local")
    await sealed.close()
    store = Store(tmp_path)
    await store.open()
    try:
        with pytest.raises(StoreError, match="without the node's secrets key"):
            await store.resources.put("Secret", "default", "other", SECRET, "local")
        with pytest.raises(StoreError, match="without the node's secrets key"):
            await store.resources.stored("local")
        await store.resources.put("ConfigItem", "default", "c", b'{"name": "c", "data": {}}', "registry")
        assert [r.name for r in await store.resources.stored("registry")] == ["c"]
    finally:
        await store.close()
    sealed = Store(tmp_path, secrets=SecretBox(tmp_path))
    await sealed.open()
    try:
        assert [r.name for r in await sealed.resources.stored("local")] == ["db"]
    finally:
        await sealed.close()
