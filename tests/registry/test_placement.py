"""Placement by fit, failover that heals and documents held back from old nodes, on the registry store (SQLite and
PostgreSQL) with heartbeats set by hand: requests and accelerators (times a group's replicas) against each node's
reported allocatable less what is placed there, the pending reason (resource, node, how short, nodes that have not
reported), a failover that goes where the instance fits, an instance that keeps failing on a healthy node moved away
and kept away (audited, an event), and a Workload with a field a node's version does not read held back from it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from gateway import wire
from gateway.errors import ResourceError
from gateway.registry import access, history, workloads
from gateway.registry.store import RegistryStore
from gateway.resources.loader import parse_yaml

GIB = 1 << 30
CURRENT = {"version": "0.2.0", "accelerators": {}}


def offer(cpu: float, memory: float, **info: Any) -> dict[str, Any]:
    return {**CURRENT, "allocatable": {"cpu": cpu, "memory": memory}, **info}


async def placements(store: RegistryStore) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, node in await store.database.rows("SELECT name, node FROM workload_placements ORDER BY name, node"):
        found.setdefault(name, []).append(node)
    return found


async def apply(store: RegistryStore, text: str) -> list[str]:
    return await workloads.apply_documents(store, parse_yaml(text, "apps.yaml"), "default", access.cli_caller(),
                                           "apps.yaml")


async def view(store: RegistryStore, name: str, node: str | None = None) -> dict[str, Any]:
    [found] = [v for v in await workloads.workload_views(store) if v["name"] == name and v["node"] == node]
    return found


async def fleet(store: RegistryStore, offers: dict[str, dict[str, Any]]) -> None:
    for name, info in offers.items():
        await store.add_node(name, name, {"line": "1"}, 1.0, None)
        await store.heartbeat(name, info)
    await store.create_group("g", list(offers), {})


async def test_workloads_are_placed_where_their_requests_fit(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        await fleet(store, {"a": offer(2, 4 * GIB), "b": offer(4, 1 * GIB), "c": {"version": "0.2.0"}})
        # a group's replicas count: 3 x 1 core fits on b only, 3 x 512 MiB on a only: on neither
        await apply(store, """\
kind: BatchWorkload
name: big
template: {command: [sleep, "60"], requests: {cpu: 1, memory: 512Mi}}
groups: [{group: g, replicas: 3}]
""")
        assert await placements(store) == {}
        pending = await view(store, "big.a")
        assert pending["status"] == "pending" and pending["source"] == "BatchWorkload big"
        assert pending["reason"] == ("pending: needs 3 cores, 1.5 GiB memory on a node; none has it free (a: cpu 2 "
                                     "of 2 cores free, 1 short)")
        assert (await view(store, "big.b"))["reason"].endswith("(b: memory 1 GiB of 1 GiB free, 512 MiB short)")
        assert (await view(store, "big.c"))["reason"].endswith(
            "(c: has not reported its allocatable CPU and memory yet)")

        # one replica each fits on a and b; c has not said what it offers and takes nothing that requests
        await apply(store, """\
kind: BatchWorkload
name: big
template: {command: [sleep, "60"], requests: {cpu: 1, memory: 512Mi}}
groups: [{group: g, replicas: 1}]
""")
        assert await placements(store) == {"big.a": ["a"], "big.b": ["b"]}
        # what is placed is taken: a Workload asking for 2 cores by selector now fits on b only (4 - 1 free)
        await apply(store, "kind: Workload\nname: w\ncommand: [sleep, '1']\nnode_selector: {line: '1'}\n"
                           "requests: {cpu: 2}\n")
        assert (await placements(store))["w"] == ["b"]  # runs where it fits of the nodes it names
        assert [(v["node"], v["status"]) for v in await workloads.workload_views(store) if v["name"] == "w"] == [
            ("b", "pending")]
        # nothing that fits anywhere: one line for the workload, every node named
        await apply(store, "kind: Workload\nname: huge\ncommand: [sleep, '1']\nnode_selector: {line: '1'}\n"
                           "requests: {memory: 8Gi}\n")
        huge = await view(store, "huge")
        assert huge["status"] == "pending" and "a: memory 3.5 GiB of 4 GiB free, 4.5 GiB short" in huge["reason"]
        assert "c: has not reported its allocatable CPU and memory yet" in huge["reason"]
        # the running ones keep their share when a newcomer asks: big.b stays, w stays
        await workloads.schedule(store)
        assert await placements(store) == {"big.a": ["a"], "big.b": ["b"], "w": ["b"]}
        # a workload that requests nothing goes to a node that has not reported
        await apply(store, "kind: Workload\nname: light\ncommand: [sleep, '1']\nnode: c\n")
        assert (await placements(store))["light"] == ["c"]

        # bad requests are refused naming the field
        with pytest.raises(ResourceError) as refused:
            await apply(store, "kind: Workload\nname: bad\ncommand: [sleep, '1']\nnode: a\n"
                               "requests: {cpu: 2}\nlimits: {cpu: 1}\n")
        assert refused.value.problems == ["apps.yaml: document 1: $.requests.cpu: 2 cores is more than limits.cpu "
                                          "(1)"]
        with pytest.raises(ResourceError, match=r"\$\.requests\.memory: Expected a size"):
            await apply(store, "kind: Workload\nname: bad\ncommand: [sleep, '1']\nrequests: {memory: lots}\n")
        with pytest.raises(ResourceError, match=r"\$\.template\.requests\.cpu: Expected `float` > 0|"
                                                r"\$\.template\.requests\.cpu: Expected float > 0"):
            await apply(store, "kind: BatchWorkload\nname: bad\ntemplate: {command: [x], requests: {cpu: -1}}\n"
                               "groups: [{group: g}]\n")


async def test_failover_goes_where_the_instance_fits(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        await fleet(store, {"a": offer(1, GIB), "b": offer(1, GIB), "c": offer(4, GIB)})
        await apply(store, """\
kind: BatchWorkload
name: app
template: {command: [sleep, "60"], requests: {cpu: 1}}
groups: [{group: g}]
failover: {after: 10s}
""")
        assert await placements(store) == {"app.a": ["a"], "app.b": ["b"], "app.c": ["c"]}
        await store.database.write("UPDATE nodes SET last_heartbeat=? WHERE name='a'", time.time() - 20)
        await workloads.schedule(store)
        assert (await placements(store))["app.a"] == ["c"]  # b is full; c has room
        await store.database.write("UPDATE nodes SET last_heartbeat=? WHERE name='c'", time.time() - 20)
        await store.heartbeat("a", offer(1, GIB))
        await workloads.schedule(store)
        # c is down: app.a goes home, app.c has nowhere with room and stays where it was
        assert await placements(store) == {"app.a": ["a"], "app.b": ["b"], "app.c": ["c"]}


async def test_an_instance_that_keeps_failing_moves_and_stays_away(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        await fleet(store, {"a": CURRENT, "b": CURRENT})
        await apply(store, """\
kind: BatchWorkload
name: app
template: {command: [sleep, "60"]}
groups: [{group: g}]
failover: {after: 10s, avoid_for: 1h}
""")
        assert await placements(store) == {"app.a": ["a"], "app.b": ["b"]}

        async def report(node: str, status: str, reason: str = "") -> None:
            await workloads.record_status(store, node, [wire.WorkloadReport(
                workload="default/app.a", status=status, reason=reason, replicas=1)])

        await report("a", "restarting", "app.a-1-1: exited with code 3")
        await workloads.schedule(store)
        assert (await placements(store))["app.a"] == ["a"]  # not for `after` yet
        await report("a", "running")  # a moment up between two crashes: the streak goes on
        await store.database.write("UPDATE workload_failures SET since=since-11")
        await workloads.schedule(store)
        assert (await placements(store))["app.a"] == ["b"]
        [move] = await store.workloads.moves("default", "app.a")
        assert move[:2] == ("a", "b") and move[4].startswith("kept failing (restarting on a for 11s: app.a-1-1: "
                                                             "exited with code 3); moved to b")
        audit = await store.database.rows("SELECT actor, action, object, detail FROM audit WHERE "
                                          "action='workload.move'")
        assert [row[:3] for row in audit] == [("registry:scheduler", "workload.move", "Workload/default/app.a")]
        events = await history.workload_events(store, access.cli_caller(), "default", "app.a")
        assert [(e["node"], e["event"]) for e in events] == [("a", "moved")]
        assert "moved to b" in events[0]["reason"]
        view = await view_of(store, "app.a")
        assert view["node"] == "b" and view["origin"] == "a"

        # move_back would take it home: it stays away while a is avoided, and goes home after
        for _ in range(2):
            await workloads.schedule(store)
        assert (await placements(store))["app.a"] == ["b"]
        await store.database.write("UPDATE workload_moves SET avoid_until=?", time.time() - 1)
        await workloads.schedule(store)
        assert (await placements(store))["app.a"] == ["a"]
        assert await store.workloads.failures() == {}  # the streak ended with the move

        # a streak that ends: well again for `after`, then failing anew starts from zero
        await report("a", "failed", "exited with code 3")
        await store.database.write("UPDATE workload_failures SET since=since-5, last_failed=last_failed-11")
        await report("a", "running")
        await store.database.write("UPDATE workload_failures SET last_failed=last_failed-11")
        await workloads.schedule(store)
        assert await store.workloads.failures() == {}
        assert (await placements(store))["app.a"] == ["a"]


async def view_of(store: RegistryStore, name: str) -> dict[str, Any]:
    [found] = [v for v in await workloads.workload_views(store) if v["name"] == name]
    return found


async def test_documents_a_node_cannot_read_are_held_back(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        await fleet(store, {"old": {"version": "0.1.0"}, "new": CURRENT, "quiet": {}})
        await apply(store, """\
kind: Workload
name: rolling
command: [sleep, "60"]
node_selector: {line: "1"}
replicas: 2
strategy: {type: RollingUpdate, max_surge: 1}
""")
        await apply(store, "kind: Workload\nname: plain\ncommand: [sleep, '60']\nnode_selector: {line: '1'}\n")
        assert await placements(store) == {"plain": ["new", "old", "quiet"], "rolling": ["new", "old", "quiet"]}
        names = {node: {d["name"] for d in (await store.node_documents(node))[1]} for node in ("old", "new", "quiet")}
        # the old node gets what it reads; a node that never said its version gets everything
        assert names == {"old": {"plain"}, "new": {"plain", "rolling"}, "quiet": {"plain", "rolling"}}
        held = await view(store, "rolling", "old")
        assert held["status"] == "held-back"
        assert held["reason"] == ("held back: node version 0.1.0 does not support field strategy (fieldgate 0.2.0 "
                                  "and later do); upgrade the node")
        assert (await view(store, "rolling", "new"))["status"] == "pending"
        await apply(store, "kind: Service\nname: web\nworkload: plain\nports: [{port: 80}]\n")
        kinds = {node: {d["kind"] for d in (await store.node_documents(node))[1]} for node in ("old", "new")}
        assert "Service" not in kinds["old"] and "Service" in kinds["new"]  # a kind the old node does not read
        await store.heartbeat("old", {"version": "0.2.0"})  # upgraded
        assert {d["name"] for d in (await store.node_documents("old"))[1]} == {"plain", "rolling", "web"}


def test_every_workload_field_has_a_first_version() -> None:
    from gateway.resources import versions
    from gateway.resources.schema import Workload

    fields = set(Workload.__struct_fields__) | {"kind"}
    assert fields - versions.WORKLOAD_FIELDS_SINCE.keys() == set(), "add the new fields to WORKLOAD_FIELDS_SINCE"
    assert versions.WORKLOAD_FIELDS_SINCE.keys() - fields == set()
    from gateway import __version__
    newest = max(map(versions.parse_version, versions.WORKLOAD_FIELDS_SINCE.values()), key=lambda v: v or (0,))
    assert newest is not None and newest <= versions.parse_version(__version__)  # type: ignore[operator]
    assert versions.unsupported_fields({"strategy": {}, "name": "x"}, "0.1.3") == [("strategy", "0.2.0")]
    assert versions.unsupported_fields({"strategy": {}}, "0.2.0rc1") == []
    assert versions.unsupported_fields({"strategy": {}}, "unknown") == []
