"""Versions of registry Workload documents and the events nodes report, on the registry store (SQLite and
PostgreSQL): every changing apply is a version, at most KEEP_VERSIONS are kept, a rollback is a new version and is
audited, events are kept once each and at most KEEP_EVENTS per node and workload, a hostile report is refused (the
node's side of the events is tests/uplink/test_workloads.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import msgspec
import pytest

from gateway import wire
from gateway.errors import NotFound
from gateway.registry import access, history, workloads
from gateway.registry.store import RegistryStore
from gateway.resources.loader import parse_yaml

SECRET = "kind: Secret\nname: db\ndata: {password: very-secret-1}\n"


def workload(version: str) -> str:
    return (f"kind: Workload\nname: app\nnode: a\ncommand: [sleep, '60']\nenv: {{APP_VERSION: {version}}}\n"
            "env_from: [{name: DB_PASSWORD, secret: db, key: password}]\n")



async def test_versions_are_kept_bounded_and_rolled_back(db_url: str | None, tmp_path: Path) -> None:
    cli = access.cli_caller()
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        await store.add_node("a", "a", {}, 1.0, None)
        await store.heartbeat("a", {})

        async def apply(text: str) -> None:
            await workloads.apply_documents(store, parse_yaml(text, "app.yaml"), "default", cli, "app.yaml")

        async def running_env() -> dict[str, str]:
            [doc] = [d for d in (await store.node_documents("a"))[1] if d["kind"] == "Workload"]
            return dict(doc["env"])

        await apply(SECRET + "---\n" + workload("v1"))
        await apply(workload("v1"))  # unchanged: no new version
        await apply(workload("v2"))
        listed = await history.versions(store, cli, "Workload", "default", "app")
        assert [(v["version"], v["document"]["env"]["APP_VERSION"], v["current"]) for v in listed] == [
            (1, "v1", False), (2, "v2", True)]
        assert listed[0]["actor"].startswith("cli:")
        assert await running_env() == {"APP_VERSION": "v2"}

        done = await history.rollback(store, cli, "Workload", "default", "app", 1)
        assert done == {"kind": "Workload", "namespace": "default", "name": "app", "rolled_back_to": 1,
                        "version": 3, "changed": True}
        assert await running_env() == {"APP_VERSION": "v1"}
        newest = (await history.versions(store, cli, "Workload", "default", "app"))[-1]
        assert (newest["version"], newest["note"], newest["current"]) == (3, "rollback to version 1", True)
        again = await history.rollback(store, cli, "Workload", "default", "app", 1)
        assert (again["version"], again["changed"]) == (3, False)  # the spec runs already: nothing new

        entries = await access.audit_entries(store, cli)
        rollbacks = [e for e in entries if e["action"] == "document.rollback"]
        assert rollbacks and rollbacks[0]["object"] == "Workload/default/app" and rollbacks[0]["outcome"] == "ok"
        assert "rollback to version 1" in rollbacks[0]["detail"]
        with pytest.raises(NotFound, match=r"has no version 9 \(kept: 1, 2, 3\)"):
            await history.rollback(store, cli, "Workload", "default", "app", 9)
        assert (await access.audit_entries(store, cli))[0]["outcome"] == "not found"
        with pytest.raises(NotFound, match="no Workload default/other"):
            await history.versions(store, cli, "Workload", "default", "other")
        with pytest.raises(NotFound, match="versions are kept of Workload and BatchWorkload"):
            await history.versions(store, cli, "Secret", "default", "db")

        for i in range(4, 26):  # bounded: the newest KEEP_VERSIONS stay
            await apply(workload(f"v{i}"))
        kept = [v["version"] for v in await history.versions(store, cli, "Workload", "default", "app")]
        assert kept == list(range(26 - history.KEEP_VERSIONS, 26))  # 3 so far + 22

        # the secret's value is in no version (the Workload names it), nor anywhere in clear in the database
        rows = await store.database.rows("SELECT document FROM document_versions")
        assert rows and not any("very-secret-1" in row[0] for row in rows)

        # a document stored before versions were kept: its spec becomes version 1 on the next apply
        legacy = {"kind": "Workload", "name": "old", "namespace": "default", "node": "a", "command": ["true"]}
        await store.put_documents([("Workload", "default", "old", "a", json.dumps(legacy).encode())])
        await apply(workload("v99").replace("name: app", "name: old"))
        old = await history.versions(store, cli, "Workload", "default", "old")
        assert [(v["version"], v["note"]) for v in old] == [(1, "applied before versions were kept"), (2, "")]


def report(name: str, events: list[wire.EventReport]) -> wire.WorkloadReport:
    return wire.WorkloadReport(workload=f"default/{name}", status="running", events=events)


async def test_events_are_kept_once_and_bounded(db_url: str | None, tmp_path: Path) -> None:
    cli = access.cli_caller()
    async with RegistryStore(tmp_path / "registry", db_url) as store:
        for node in ("a", "b"):
            await store.add_node(node, node, {}, 1.0, None)
            await store.heartbeat(node, {})
        now = time.time()
        first = [wire.EventReport(seq=1, ts=now, event="scheduled", reason="version 1"),
                 wire.EventReport(seq=2, ts=now + 0.1, event="started", instance="app-0-1", reason="pid 7")]
        await workloads.record_status(store, "a", [report("app", first)])
        await workloads.record_status(store, "a", [report("app", first)])  # sent again: stored once
        await workloads.record_status(store, "b", [report("app", first[:1])])
        events = await history.workload_events(store, cli, "default", "app")
        assert [(e["node"], e["event"]) for e in events] == [("a", "scheduled"), ("b", "scheduled"),
                                                              ("a", "started")]
        assert [e["event"] for e in await history.workload_events(store, cli, "default", "app", node="a")] == [
            "scheduled", "started"]

        many = [wire.EventReport(seq=10 + i, ts=now + 1 + i, event="restarted", instance="app-0-1",
                                 reason=f"restart {i}") for i in range(wire.MAX_EVENTS)]
        for batch in range(6):  # 120 more events: the newest KEEP_EVENTS stay
            shifted = [msgspec.structs.replace(e, seq=e.seq + 100 * batch, ts=e.ts + 100 * batch) for e in many]
            await workloads.record_status(store, "a", [report("app", shifted)])
        kept = await history.workload_events(store, cli, "default", "app", node="a", limit=1000)
        assert len(kept) == history.KEEP_EVENTS and kept[-1]["ts"] == pytest.approx(now + 1 + 19 + 500)

        # a workload the node no longer reports takes its events along
        await workloads.record_status(store, "a", [])
        assert await history.workload_events(store, cli, "default", "app", node="a") == []
        await store.remove_node("b")
        assert await history.workload_events(store, cli, "default", "app") == []


def test_a_hostile_report_does_not_decode() -> None:
    event = {"seq": 1, "ts": 1.0, "event": "started"}
    for bad, named in (([event] * (wire.MAX_EVENTS + 1), "events"),
                       ([{**event, "reason": "x" * (wire.MAX_REASON + 1)}], "reason"),
                       ([{**event, "event": "e" * 33}], "event"),
                       ([{**event, "extra": 1}], "extra")):
        body = msgspec.json.encode([{"workload": "default/app", "status": "running", "events": bad}])
        with pytest.raises(msgspec.ValidationError, match=named):
            msgspec.json.decode(body, type=wire.WorkloadReports)
