"""Exec health checks, an instance that turns unhealthy and is restarted, and the restart policies; where checks
run and connect when the runtime's instance says so, and when it does not."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from gateway.resources.durations import Duration
from gateway.resources.schema import HealthCheck, Workload, dec_hook
from gateway.resources.workload_checks import workload_problems
from gateway.testing import wait_until
from gateway.workloads.health import check_address, probe
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


class HostInstance:
    """An instance of a runtime that says nothing about its checks (as third-party ones written before)."""


class ElsewhereInstance:
    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    async def exec_check(self, command: list[str]) -> str | None:
        self.commands.append(command)
        return None if command == ["ok"] else "not ok inside"

    def check_address(self, port: int | str) -> tuple[str, int] | None:
        return ("127.0.0.2", 8080) if port == "http" else None


async def test_exec_checks_run_on_the_host_unless_the_instance_runs_them(tmp_path: Path) -> None:
    (tmp_path / "marker").touch()
    script = "import os, sys; sys.exit(0 if os.environ['WANTED'] == 'yes' and os.path.exists('marker') else 4)"
    check = HealthCheck(type="exec", command=[PYTHON, "-c", script])
    env = {"WANTED": "yes"}
    assert await probe(check, {}, env, str(tmp_path), HostInstance()) is None  # the instance's env and cwd
    assert await probe(check, {}, {"WANTED": "no"}, str(tmp_path)) == "exec check exited with 4"

    elsewhere = ElsewhereInstance()
    assert await probe(HealthCheck(type="exec", command=["ok"]), {}, env, str(tmp_path), elsewhere) is None
    assert await probe(check, {}, env, str(tmp_path), elsewhere) == "not ok inside"
    assert elsewhere.commands == [["ok"], check.command]

    hanging = HealthCheck(type="exec", command=[PYTHON, "-c", "import time; time.sleep(30)"], timeout=Duration(0.3))
    assert await probe(hanging, {}, env, None) == "exec check timed out after 0.3s"


def test_http_and_tcp_checks_connect_where_the_instance_says() -> None:
    named = HealthCheck(type="http", port="http")
    assert check_address(named, {"http": 31000}) == ("127.0.0.1", 31000)
    assert check_address(named, {"http": 31000}, HostInstance()) == ("127.0.0.1", 31000)
    assert check_address(HealthCheck(type="tcp", port=9000), {}) == ("127.0.0.1", 9000)
    assert check_address(named, {"http": 31000}, ElsewhereInstance()) == ("127.0.0.2", 8080)
    assert check_address(HealthCheck(type="tcp", port="admin"), {}, ElsewhereInstance()) is None


def test_network_none_has_no_http_or_tcp_checks() -> None:
    workload = msgspec.convert({"name": "app", "runtime": "container", "image": "localhost/app:1", "network": "none",
                                "health": {"type": "tcp", "port": 8080}}, Workload, dec_hook=dec_hook)
    assert workload_problems(workload, {}, {}) == [
        ("$.health.type", "network none: a tcp check cannot reach the app (use an exec check)")]
