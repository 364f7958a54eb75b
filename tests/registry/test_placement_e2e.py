"""Placement at a real registry with two real gateway processes: an app that exits non-zero on one node only (it
finds a file named after that node) moves to the other node of its group after `failover.after`, the move audited
and shown as an event on the app page, and it does not come back; a workload that requests more memory than any node
offers is pending and the CLI says which resource is short on which node."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry.conftest import Registry, wait_until
from tests.registry.test_access import add_user, login
from tests.registry.test_batch_workloads import WEB_APP, Gateway, running, views

pytestmark = pytest.mark.beside  # a registry and two gateways, mostly waiting


@pytest.fixture
def pair(registry: Registry, tmp_path: Path) -> Iterator[list[Gateway]]:
    started = [Gateway(registry, tmp_path, f"gw-{i}") for i in (1, 2)]
    try:
        for gateway in started:
            gateway.start()
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def test_an_app_failing_on_one_node_moves_to_another_and_stays(registry: Registry, pair: list[Gateway],
                                                               tmp_path: Path) -> None:
    registry.cli("group", "create", "line-a", "--nodes", "gw-1,gw-2")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "gw-1").write_text("this node lacks what the app needs\n")
    script = (f'[ -e {broken}/"$FIELDGATE_NODE" ] && {{ echo missing part >&2; exit 3; }}; '
              f'exec {sys.executable} {WEB_APP}')
    (tmp_path / "heal.yaml").write_text(json.dumps({
        "kind": "BatchWorkload", "name": "heal",
        "template": {"command": ["/bin/sh", "-c", script], "ports": [{"name": "http"}], "restart_delay": "200ms",
                     "restart_delay_max": "1s", "stop_grace": "2s"},
        "groups": [{"group": "line-a"}], "failover": {"after": "3s", "avoid_for": "1h"}}))
    registry.cli("apply", "-f", str(tmp_path / "heal.yaml"))

    wait_until(lambda: running(registry, "heal.gw-2", "gw-2"), timeout=30, what="heal.gw-2 running on gw-2")
    moved = wait_until(lambda: running(registry, "heal.gw-1", "gw-2"), timeout=40, what="heal.gw-1 moved to gw-2")
    assert moved["origin"] == "gw-1"
    assert ("heal.gw-1", "gw-1") not in views(registry)

    events = [json.loads(line) for line in
              registry.cli("workloads", "events", "heal.gw-1", "--json").stdout.splitlines()]
    [move] = [e for e in events if e["event"] == "moved"]
    assert move["node"] == "gw-1" and "kept failing (" in move["reason"] and move["reason"].endswith("moved to gw-2")
    assert "exited with code 3" in move["reason"]
    audit = registry.cli("audit").stdout
    assert "workload.move" in audit and "Workload/default/heal.gw-1" in audit

    add_user(registry, tmp_path, "ops", "--role", "viewer")
    with login(registry, "ops") as pages:
        page = pages.get("/workloads/default/heal.gw-1")
        assert page.status_code == 200
        assert '<td class="event-name">moved</td>' in page.text and "moved to gw-2" in page.text

    # move_back is on, gw-1 is healthy: the app stays away from the node it failed on all the same
    deadline = time.monotonic() + 6  # several scheduler periods
    while time.monotonic() < deadline:
        assert ("heal.gw-1", "gw-1") not in views(registry)
        time.sleep(1)
    assert running(registry, "heal.gw-1", "gw-2")
    # a workload that asks for more memory than either node has is pending, and says why
    (tmp_path / "big.yaml").write_text(json.dumps({
        "kind": "Workload", "name": "big", "node_selector": {"line": "a"}, "command": ["/bin/true"],
        "requests": {"memory": "4096Gi"}}))
    registry.cli("apply", "-f", str(tmp_path / "big.yaml"))
    [line] = [line for line in registry.cli("workloads").stdout.splitlines() if line.startswith("default/big ")]
    assert "pending" in line and "pending: needs 4096 GiB memory on a node; none has it free (gw-1: memory " in line
    assert "; gw-2: memory " in line and " short" in line
