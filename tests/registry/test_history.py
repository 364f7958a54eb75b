"""Versions of registry Workload documents and the events nodes report, on the registry store (SQLite and
PostgreSQL): every changing apply is a version, at most KEEP_VERSIONS are kept, a rollback is a new version and is
audited, events are kept once each and at most KEEP_EVENTS per node and workload, a hostile report is refused; a
node sends each event until the registry has it, across restarts of the gateway, and never more than the bounds."""

from __future__ import annotations

import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from gateway import wire
from gateway.errors import NotFound
from gateway.registry import access, history, workloads
from gateway.registry.store import RegistryStore
from gateway.resources.loader import parse_yaml
from gateway.store import Store
from gateway.workloads.history import WorkloadHistory
from gateway.workloads.supervisor import RECENT_EVENTS, RecentEvent, stored_events

SECRET = "kind: Secret\nname: db\ndata: {password: very-secret-1}\n"


def workload(version: str) -> str:
    return (f"kind: Workload\nname: app\nnode: a\ncommand: [sleep, '60']\nenv: {{APP_VERSION: {version}}}\n"
            "env_from: [{name: DB_PASSWORD, secret: db, key: password}]\n")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("pg_database") if request.param == "postgresql" else None


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


class Runners:
    """The part of a node's workload manager WorkloadSync reads: one registry-owned workload, its events (kept in a
    real store, as the runner keeps them) and how far the registry has them."""

    def __init__(self, history: WorkloadHistory) -> None:
        self.history = history
        self.runner = SimpleNamespace(recent=collections.deque(maxlen=RECENT_EVENTS))
        self.runners = {"default/app": self.runner}

    def describe(self) -> list[dict[str, object]]:
        return [{"id": name, "owner": "registry", "status": "running", "reason": "", "replicas": 1, "ready": 1,
                 "last_event": "", "instances": []} for name in self.runners]

    async def record(self, reason: str) -> int:
        """An event of default/app, stored and remembered as WorkloadRunner.event does; its seq."""
        ts = time.time()
        seq = await self.history.add_event("default", "app", "restarted", "app-0-1", reason, ts=ts)
        self.runner.recent.append(RecentEvent(seq, ts, "restarted", "app-0-1", reason))
        return seq


@contextlib.asynccontextmanager
async def node(data_dir: Path) -> AsyncIterator[tuple[Runners, workloads.WorkloadSync]]:
    """A node's store opened as a starting gateway opens it, with the registry half of a fresh WorkloadSync."""
    store = Store(data_dir)
    await store.open()
    try:
        node_history = WorkloadHistory(store)
        await node_history.load_delivered()
        runners = Runners(node_history)
        runners.runner.recent.extend(await stored_events(node_history, "default", "app"))
        yield runners, workloads.WorkloadSync(SimpleNamespace(workloads=runners))  # type: ignore[arg-type]
    finally:
        await store.close()


async def test_a_node_sends_each_event_until_it_is_delivered(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setattr(workloads, "MIN_REPORT_INTERVAL", 0.0)
    async with node(tmp_path) as (runners, sync):
        def sent() -> list[int] | None:
            body = sync.outgoing()
            return [e["seq"] for e in body["workloads"][0]["events"]] if body else None

        first = [await runners.record("one"), await runners.record("two")]
        assert sent() == first
        sync.delivered()
        assert sent() is None  # nothing changed, nothing new
        third = await runners.record("three")
        assert sent() == [third]
        sync.failed()  # the heartbeat did not get through: the same event goes again
        assert sent() == [third]
        sync.delivered()
        many = [await runners.record(f"restart {i}") for i in range(36)]
        assert sent() == many[-workloads.MAX_EVENTS:]  # the newest MAX_EVENTS of those not delivered


async def test_a_restarted_node_sends_exactly_the_events_the_registry_has_not_acknowledged(
        db_url: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Event seqs are ids in the node's store and the registry's acknowledgement is kept there: after a restart of
    the gateway the node sends the events the registry has not acknowledged, no others, and one the registry got
    though its answer was lost is stored there once."""
    monkeypatch.setattr(workloads, "MIN_REPORT_INTERVAL", 0.0)
    cli = access.cli_caller()
    async with RegistryStore(tmp_path / "registry", db_url) as registry:
        await registry.add_node("a", "a", {}, 1.0, None)
        await registry.heartbeat("a", {})

        async def heartbeat(sync: workloads.WorkloadSync) -> list[int]:
            """The registry records what the next heartbeat carries; the seqs of its events."""
            body = sync.outgoing()
            reports = msgspec.convert(body.get("workloads", []), wire.WorkloadReports)
            if body:
                await workloads.record_status(registry, "a", reports)
            return [event.seq for report in reports for event in report.events]

        async with node(tmp_path / "node") as (runners, sync):
            first = [await runners.record(f"e{i}") for i in range(3)]
            assert await heartbeat(sync) == first
            sync.delivered()
            unacknowledged = [await runners.record(f"e{i}") for i in (3, 4)]
            assert await heartbeat(sync) == unacknowledged
            sync.failed()  # the registry stored them, its answer was lost
            unacknowledged.append(await runners.record("e5"))  # the registry is down now: not sent before the stop

        async with node(tmp_path / "node") as (runners, sync):  # the gateway restarts
            assert await heartbeat(sync) == unacknowledged
            sync.failed()
        async with node(tmp_path / "node") as (runners, sync):  # and again, still without an acknowledgement
            assert await heartbeat(sync) == unacknowledged
            sync.delivered()
            newer = await runners.record("e6")
            assert newer > unacknowledged[-1]  # the numbering goes on across restarts
            assert await heartbeat(sync) == [newer]
            sync.delivered()
        async with node(tmp_path / "node") as (runners, sync):
            assert await heartbeat(sync) == []  # the status goes again after a restart, no event
        at_registry = await history.workload_events(registry, cli, "default", "app")
        assert [e["reason"] for e in at_registry] == [f"e{i}" for i in range(7)]  # each once, in order


async def test_events_stored_before_delivery_was_kept_count_as_delivered(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    """A gateway that kept no acknowledgement (an older version) sent its events under other numbers: the first
    start that keeps them takes them as delivered instead of sending them twice."""
    monkeypatch.setattr(workloads, "MIN_REPORT_INTERVAL", 0.0)
    store = Store(tmp_path)
    await store.open()
    for reason in ("before", "the upgrade"):
        await WorkloadHistory(store).add_event("default", "app", "restarted", "app-0-1", reason)
    await store.close()
    async with node(tmp_path) as (runners, sync):
        assert [e.reason for e in runners.runner.recent] == ["before", "the upgrade"]
        assert sync.outgoing()["workloads"][0]["events"] == []
        sync.delivered()
        after = await runners.record("after")
        assert [e["seq"] for e in sync.outgoing()["workloads"][0]["events"]] == [after]
    async with node(tmp_path) as (runners, sync):  # the starting point is kept, not taken again
        assert [e["seq"] for e in sync.outgoing()["workloads"][0]["events"]] == [after]


async def test_one_heartbeat_carries_a_bounded_number_of_events(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """Many workloads with many new events: the older ones go first, the rest with the following heartbeats."""
    monkeypatch.setattr(workloads, "MIN_REPORT_INTERVAL", 0.0)
    monkeypatch.setattr(workloads, "MAX_EVENTS_PER_BEAT", 25)
    async with node(tmp_path) as (runners, sync):
        for k in range(3):
            runners.runners[f"default/app{k}"] = SimpleNamespace(
                recent=[RecentEvent(100 * k + i, float(i), "restarted", f"app{k}-0-1", "") for i in range(1, 13)])
        got: dict[str, list[int]] = {}
        for _ in range(3):
            body = sync.outgoing()
            if not body:
                break  # everything delivered, nothing changed
            assert sum(len(w["events"]) for w in body["workloads"]) <= 25
            for report in body["workloads"]:
                got.setdefault(report["workload"], []).extend(e["seq"] for e in report["events"])
            sync.delivered()
    assert got["default/app2"] == sorted(got["default/app2"])  # in order across heartbeats, none twice
    assert {name: len(seqs) for name, seqs in got.items()} == {"default/app": 0, "default/app0": 12,
                                                               "default/app1": 12, "default/app2": 12}
