"""What a heartbeat costs the registry's database: the trips it takes (a trip to SQLite's thread or a round trip
to PostgreSQL costs several times what a small statement does), and the scheduler's reads of a fleet without apps.
The CPU figures are in tests/benchmarks/test_registry_heartbeat.py."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.errors import AuthError
from gateway.registry import access, workloads
from gateway.registry.app import take_heartbeat
from gateway.registry.store import RegistryStore
from gateway.resources.loader import parse_yaml
from gateway.wire import HeartbeatRequest

INFO = {"version": "0.2.0", "cpu_percent": 3.5, "devices": {"total": 12, "online": 12}, "resource_version": ""}
FIGURES = {"figures": [["default/app-0", "app-0-1-0", 12.5, 52428800.0, 0.0, 4096.0, None, None]],
           "allocatable": {"cpu": 4.0, "memory": 4294967296.0}}


def count_trips(store: RegistryStore, monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    trips: collections.Counter[str] = collections.Counter()
    for method in ("rows", "write", "transaction", "reads"):
        real = getattr(store.database, method)

        def counted(*args: Any, _real: Any = real, _method: str = method, **kwargs: Any) -> Any:
            trips[_method] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(store.database, method, counted)
    return trips


async def test_a_heartbeat_with_nothing_new_for_the_node_takes_two_trips(db_url: str | None, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        await store.add_node("gw-1", "ab", {}, 5.0)
        await store.put_documents([("Device", "default", "pump", "gw-1", b'{"kind": "Device", "name": "pump"}')])
        first = await take_heartbeat(store, "gw-1", msgspec.convert({"info": INFO}, HeartbeatRequest), "127.0.0.1",
                                     "channel", "ab")
        assert [d["name"] for d in first.documents or []] == ["pump"]
        trips = count_trips(store, monkeypatch)
        for body in ({"info": INFO}, {"info": INFO, **FIGURES}):  # with its apps' figures, as every other one
            request = msgspec.convert({**body, "resource_version": first.resource_version}, HeartbeatRequest)
            answer = await take_heartbeat(store, "gw-1", request, "127.0.0.1", "channel", "ab")
            assert answer.documents is None and answer.resource_version == first.resource_version
            assert answer.heartbeat_interval == 5.0 and answer.upgrade is None
        # the write with the certificate's check and what the answer needs; the node's documents in one look
        assert trips == {"transaction": 2, "reads": 2}, trips
        [(info,)] = await store.database.rows("SELECT info FROM nodes WHERE name='gw-1'")
        assert '"seen_from": "127.0.0.1"' in info and '"allocatable"' in info
        with pytest.raises(AuthError, match="unknown node certificate"):
            await take_heartbeat(store, "gw-1", msgspec.convert({"info": INFO}, HeartbeatRequest), None, "channel",
                                 "cd")


async def test_the_scheduler_reads_the_nodes_only_when_there_is_something_to_place(
        db_url: str | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with RegistryStore(tmp_path, db_url) as store:
        for n in range(3):
            await store.add_node(f"gw-{n}", f"s{n}", {"line": "1"}, 1.0)
            await store.heartbeat(f"gw-{n}", {"version": "0.2.0", "allocatable": {"cpu": 2, "memory": 1 << 30}})
        looks = []
        real = store.node_infos

        async def node_infos() -> dict[str, dict[str, Any]]:
            looks.append(1)
            return await real()

        monkeypatch.setattr(store, "node_infos", node_infos)
        assert await workloads.schedule(store) == 0
        assert looks == []  # a fleet without apps: no node's info read every period
        await workloads.apply_documents(store, parse_yaml("kind: Workload\nname: w\ncommand: [sleep, '1']\n"
                                                          "node_selector: {line: '1'}\n", "apps.yaml"),
                                        "default", access.cli_caller(), "apps.yaml")
        await workloads.schedule(store)
        assert looks and sorted(n for _, _, n, *_ in await store.workloads.placements()) == ["gw-0", "gw-1", "gw-2"]


async def test_a_channel_sync_reads_what_it_pushes_in_one_trip(db_url: str | None, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A woken channel's look: the certificate, the node's documents, its desired values and its messages."""
    async with RegistryStore(tmp_path, db_url) as store:
        await store.add_node("gw-1", "ab", {}, 5.0)
        await store.put_documents([("Device", "default", "pump", "gw-1", b'{"kind": "Device", "name": "pump"}')])
        await store.twins.set_desired("gw-1", "default", "pump", {"speed": 40}, 1.0)
        await store.twins.set_desired("gw-1", "default", "pump", {"mode": "auto"}, 2.0)
        kept = await store.queue_message("gw-1", "default", "cmd", b"go", 600)
        await store.queue_message("gw-1", "default", "cmd", b"late", -1)  # expired already
        trips = count_trips(store, monkeypatch)
        version, documents, desired, messages = await store.node_sync("gw-1", "ab", 1)
        assert trips == {"reads": 1}, trips
        assert (version, documents) == await store.node_documents("gw-1")
        assert desired == [("default", "pump", "mode", "auto", 2)]  # newer than the node's version 1 only
        assert [(m["id"], m["payload"]) for m in messages] == [(kept["id"], "Z28=")]
        await store.remove_node("gw-1")
        with pytest.raises(AuthError, match="certificate revoked"):
            await store.node_sync("gw-1", "ab", 0)
