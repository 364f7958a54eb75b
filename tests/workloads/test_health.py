"""Exec health checks, an instance that turns unhealthy and is restarted, and the restart policies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.testing import wait_until
from tests.workloads.conftest import PYTHON, Node

FLAKY = f"""\
kind: Workload
name: flaky
command: [{PYTHON}, -c, "import os, time; open('ok', 'w').close(); time.sleep(0.8); os.remove('ok'); time.sleep(60)"]
health: {{type: exec, command: [{PYTHON}, -c, "import os, sys; sys.exit(0 if os.path.exists('ok') else 3)"],
         interval: 100ms, timeout: 5s, failure_threshold: 2}}
restart_delay: 100ms
stop_grace: 1s
---
kind: Workload
name: once
command: [{PYTHON}, -c, "print('done')"]
restart: on-failure
---
kind: Workload
name: crashes
command: [{PYTHON}, -c, "import sys; sys.exit(7)"]
restart: on-failure
restart_delay: 100ms
restart_delay_max: 200ms
"""


async def test_unhealthy_instances_are_restarted_and_policies_are_followed(start_node: Callable[..., Any]) -> None:
    node: Node = await start_node(FLAKY)

    async def flaky_restarted() -> list[dict[str, Any]] | None:
        events = (await node.api.get("/api/v1/workloads/default/flaky/events")).json()
        return events if "restarted" in [e["event"] for e in events] else None

    events = await wait_until(flaky_restarted)
    names = [e["event"] for e in events]
    assert names[:5] == ["scheduled", "started", "ready", "unhealthy", "failed"]
    assert "exec check exited with 3" in events[3]["reason"] and "2 checks in a row" in events[3]["reason"]
    assert events[4]["reason"].startswith("unhealthy: ") and "signal 15" in events[4]["reason"]

    async def status(name: str, wanted: str) -> dict[str, Any] | None:
        workload = await node.workload(name)
        return workload if workload["status"] == wanted else None

    once = await wait_until(lambda: status("once", "completed"))
    assert once["instances"][0]["state"] == "exited" and once["instances"][0]["restarts"] == 0
    logs = (await node.api.get("/api/v1/workloads/default/once/logs")).json()
    assert [line["line"] for line in logs["lines"]] == ["done"]

    async def crashed_thrice() -> dict[str, Any] | None:
        workload = await node.workload("crashes")
        (instance,) = workload["instances"]
        return workload if instance["restarts"] >= 3 else None

    crashes = await wait_until(crashed_thrice)
    assert crashes["status"] not in ("failed", "completed"), "on-failure keeps restarting a crashing app"
    assert crashes["instances"][0]["last_exit"] == "exited with code 7"
    crash_events = (await node.api.get("/api/v1/workloads/default/crashes/events")).json()
    assert [e["reason"] for e in crash_events if e["event"] == "restarted"][:2] == [
        "restart 1 after: exited with code 7", "restart 2 after: exited with code 7"]
