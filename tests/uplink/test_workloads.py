"""The node's half of registry workloads: a node sends each event until the registry has it, across restarts of the
gateway (event seqs and the registry's acknowledgement are kept in the node's store), and never more than the
bounds."""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest

from gateway import wire
from gateway.registry import access, history
from gateway.registry import workloads as registry_workloads
from gateway.registry.store import RegistryStore
from gateway.store import Store
from gateway.uplink import workloads
from gateway.workloads.history import WorkloadHistory
from gateway.workloads.supervisor import RECENT_EVENTS, RecentEvent, stored_events


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
                await registry_workloads.record_status(registry, "a", reports)
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


def test_figures_go_once_per_sample_and_a_node_without_apps_sends_an_empty_list_hourly() -> None:
    from gateway.workloads.figures import Counters, WorkloadFigures

    sampler = WorkloadFigures()
    sync = workloads.FiguresSync(SimpleNamespace(workloads=SimpleNamespace(figures=sampler)))  # type: ignore[arg-type]
    first = sync.outgoing()
    assert first["figures"] == [] and first["allocatable"]["cpu"] > 0 and first["allocatable"]["memory"] > 1 << 20
    assert "figures" not in sync.outgoing(), "nothing sampled since"
    counters = iter([Counters(0.0, 1.0, 10 << 20), Counters(10.0, 6.0, 20 << 20, 0, 4096)])
    runner = SimpleNamespace(id="app-1-0", handle=SimpleNamespace(counters=lambda: next(counters)))
    sampler.sample([("default/app", runner)])  # type: ignore[list-item]
    assert "figures" not in sync.outgoing(), "a first sample has no CPU figure yet; the empty list went already"
    sampler.sample([("default/app", runner)])  # type: ignore[list-item]
    sent = sync.outgoing()["figures"]
    assert sent == [["default/app", "app-1-0", 50.0, float(20 << 20), None, None, None, None]]
    assert len(msgspec.json.encode(sent)) < 80
    assert msgspec.convert(sent, list[wire.AppFigures])[0].cpu_percent == 50.0
    assert "figures" not in sync.outgoing()
