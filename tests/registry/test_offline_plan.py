"""Offline failover at the registry (gateway.registry.offline), on the registry store (SQLite and PostgreSQL) with
heartbeats set by hand: a group's plan only once every member reported its consensus settings, with the placements of
the BatchWorkloads with failover and the documents to run them; takeovers adopted and audited, refused when they do
not fit; and a registry that starts does not count its own absence as the nodes' downtime."""

from __future__ import annotations

import time
from pathlib import Path

from gateway.registry import access, offline, workloads
from gateway.registry.store import RegistryStore
from gateway.resources.loader import parse_yaml
from gateway.wire import HeartbeatRequest, Takeover

DOCUMENTS = """\
kind: Secret
name: db
data: {password: s3cret}
---
kind: BatchWorkload
name: app
template:
  command: [sleep, "60"]
  env_from: [{name: DB, secret: db, key: password}]
groups: [{group: g, env: {LINE: g}}]
failover: {after: 10s, move_back: false}
---
kind: BatchWorkload
name: pinned
template: {command: [sleep, "60"]}
groups: [{group: g}]
"""


def consensus(node: str) -> dict[str, dict[str, str]]:
    return {"consensus": {"peer_url": f"http://{node}.plant:2380", "client_url": "http://127.0.0.1:2379"}}


def beat(node: str, version: str = "", takeovers: list[Takeover] | None = None) -> HeartbeatRequest:
    return HeartbeatRequest(info=consensus(node), failover_version=version, takeovers=takeovers)


async def placements(store: RegistryStore) -> dict[str, str]:
    return {name: node for name, node in await store.database.rows(
        "SELECT name, node FROM workload_placements ORDER BY name")}


async def failover_audit(store: RegistryStore) -> list[dict[str, object]]:
    entries = await access.audit_entries(store, access.cli_caller())
    return [e for e in reversed(entries) if e["action"] == "failover.offline"]


async def test_a_group_plan_and_the_takeovers_its_members_report(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b", "c", "d"):
            await store.add_node(name, name, {}, 1.0, None)
            await store.heartbeat(name, {})
        await store.create_group("g", ["a", "b", "c"], {})
        await workloads.apply_documents(store, parse_yaml(DOCUMENTS, "app.yaml"), "default", access.cli_caller(),
                                        "app.yaml")
        assert await placements(store) == {"app.a": "a", "app.b": "b", "app.c": "c", "pinned.a": "a",
                                           "pinned.b": "b", "pinned.c": "c"}

        # no plan until every member of the group has reported its consensus settings; none outside a group
        await store.heartbeat("a", consensus("a"))
        await store.heartbeat("b", consensus("b"))
        assert await offline.group_plan(store, "a") is None
        assert await offline.plan_for(store, "a", beat("a")) is None
        await store.heartbeat("c", consensus("c"))
        await store.heartbeat("d", consensus("d"))
        assert await offline.group_plan(store, "d") is None
        plan = await offline.group_plan(store, "a")
        assert plan is not None and plan.group == "g"
        assert [(m.name, m.peer_url) for m in plan.members] == [("a", "http://a.plant:2380"),
                                                                ("b", "http://b.plant:2380"),
                                                                ("c", "http://c.plant:2380")]
        # only the BatchWorkload with failover, each instance with its host and what a member needs to run it
        assert sorted((p.workload, p.origin, p.host, p.after) for p in plan.placements) == [
            ("default/app.a", "a", "a", 10.0), ("default/app.b", "b", "b", 10.0), ("default/app.c", "c", "c", 10.0)]
        [app_c] = [p for p in plan.placements if p.origin == "c"]
        workload, secret = app_c.documents
        assert workload["kind"] == "Workload" and workload["name"] == "app.c" and workload["env"] == {"LINE": "g"}
        assert workload["labels"]["origin"] == "c"
        assert secret["kind"] == "Secret" and secret["data"] == {"password": "s3cret"}
        # the same plan is sent once: a node that has its version gets nothing
        assert await offline.plan_for(store, "b", beat("b", plan.version)) is None
        assert (await offline.plan_for(store, "b", beat("b"))) == plan
        # a node without consensus settings gets none, and its heartbeat costs no query
        assert await offline.plan_for(store, "b", HeartbeatRequest()) is None

        # b took app.c over while the registry was away: adopted, audited, and the plan now names b
        took = Takeover(workload="default/app.c", origin="c", previous="c", at=time.time() - 30)
        await offline.adopt(store, "b", [took])
        assert (await placements(store))["app.c"] == "b"
        [entry] = await failover_audit(store)
        assert (entry["actor"], entry["object"], entry["outcome"]) == ("node:b", "Workload/default/app.c", "ok")
        assert '"previous": "c"' in str(entry["detail"])
        moved = await offline.plan_for(store, "b", beat("b", plan.version))
        assert moved is not None and moved.version != plan.version
        assert next(p.host for p in moved.placements if p.origin == "c") == "b"
        assert "app.c" in {d["name"] for d in (await store.node_documents("b"))[1]}
        assert "app.c" not in {d["name"] for d in (await store.node_documents("c"))[1]}
        # reported again before the node got the plan: nothing changes, nothing more is audited
        await offline.adopt(store, "b", [took])
        assert len(await failover_audit(store)) == 1
        # the scheduler keeps it there (move_back: false), c being back or not
        await workloads.schedule(store)
        assert (await placements(store))["app.c"] == "b"

        # takeovers that do not fit are refused and audited: a node outside the group, an unknown instance, a
        # placement whose origin is not the one named
        await offline.adopt(store, "d", [Takeover(workload="default/app.a", origin="a", previous="a", at=1.0)])
        await offline.adopt(store, "a", [Takeover(workload="default/nope.x", origin="x", previous="x", at=1.0)])
        await offline.adopt(store, "a", [Takeover(workload="default/app.b", origin="c", previous="b", at=1.0)])
        # the heartbeat carrying a refused takeover gets the plan though the node has it: it settles the takeover
        again = await offline.plan_for(store, "a", beat("a", moved.version, [
            Takeover(workload="default/app.b", origin="c", previous="b", at=1.0)]))
        assert again == moved
        refused = (await failover_audit(store))[1:]
        assert [(e["actor"], e["outcome"]) for e in refused] == [
            ("node:d", "refused: no such placement in the node's group"),
            ("node:a", "refused: no such placement in the node's group"),
            ("node:a", "refused: no such placement in the node's group")]
        assert await placements(store) == {"app.a": "a", "app.b": "b", "app.c": "b", "pinned.a": "a",
                                           "pinned.b": "b", "pinned.c": "c"}

        # a member that stops reporting consensus settings ends the plan: nodes that had one are told
        await store.heartbeat("c", {})
        assert await offline.group_plan(store, "a") is None
        gone = await offline.plan_for(store, "a", beat("a", plan.version))
        assert gone is not None and gone.members == [] and gone.placements == []
        assert await offline.plan_for(store, "a", beat("a", gone.version)) is None
        assert await offline.plan_for(store, "a", beat("a")) is None


async def test_a_registry_that_starts_counts_downtime_from_its_start(db_url: str | None, tmp_path: Path) -> None:
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for name in ("a", "b"):
            await store.add_node(name, name, {}, 1.0, None)
            await store.heartbeat(name, {})
        await store.create_group("g", ["a", "b"], {})
        await workloads.apply_documents(store, parse_yaml(DOCUMENTS, "app.yaml"), "default", access.cli_caller(),
                                        "app.yaml")
        # the registry was away for a minute: b's last heartbeat is old, a's fresh (it came back first)
        await store.database.write("UPDATE nodes SET last_heartbeat=? WHERE name=?", time.time() - 60, "b")
        started = time.time() - 2  # the registry started 2 s ago: b has been "down" for 2 s of its watch, not 60
        assert await workloads.schedule(store, started) == 0
        assert (await placements(store))["app.b"] == "b"
        # counted from long ago, b is down for longer than `after`: its instance moves
        await workloads.schedule(store, time.time() - 30)
        assert (await placements(store))["app.b"] == "a"
