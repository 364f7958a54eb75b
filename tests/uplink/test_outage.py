"""Edge autonomy, measured: the registry stopped for two minutes changes nothing on a joined node's data flow, and
the node catches up once it is back.

The outage lasts FIELDGATE_OUTAGE_S seconds (120 by default). The test is marked `soak`: `./scripts/test.sh` runs
the soak tests in a process of their own beside the main run (they mostly wait), so they cost the suite no time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.registry.conftest import Registry, stop, wait_until
from tests.registry.test_twin_sync import REMOTE, Node, node

pytestmark = pytest.mark.soak
__all__ = ["node"]  # the fixture: a joined gateway process

OUTAGE_S = float(os.environ.get("FIELDGATE_OUTAGE_S", "120"))


def status(node: Node) -> dict[str, Any]:
    answer: dict[str, Any] = node.local.get("/api/v1/status").json()
    return answer


def test_two_minutes_without_the_registry_change_nothing_on_the_node(node: Node, registry: Registry,
                                                                     tmp_path: Path) -> None:
    documents = tmp_path / "registry.yaml"
    documents.write_text(REMOTE)
    registry.cli("apply", "-f", str(documents))
    node.start()
    wait_until(lambda: node.registry_twin("default/boiler-1"), what="the registry's device reported back")

    def rate_over(seconds: float) -> tuple[float, int]:
        """Poll cycles a second over the next `seconds`, and the cycles missed meanwhile."""
        before, started = status(node), time.monotonic()
        time.sleep(seconds)
        after, elapsed = status(node), time.monotonic() - started
        return (after["cycles"] - before["cycles"]) / elapsed, after["missed_cycles"] - before["missed_cycles"]

    normal, _ = rate_over(10)
    assert normal > 15  # two devices, every 100 ms
    devices = status(node)["devices"]  # local-1 has a faulty property: unhealthy, as it stays through the outage
    assert devices == {"total": 2, "online": 1, "unhealthy": 1}

    assert registry.process is not None
    stop(registry.process)
    outage_started = time.monotonic()
    during: list[tuple[float, int]] = []
    while time.monotonic() - outage_started < OUTAGE_S - 10:
        during.append(rate_over(10))
        assert status(node)["devices"] == devices
    assert len(during) >= OUTAGE_S // 10 - 2
    for rate, missed in during:  # each 10 s of the outage: the read rate of before (within 20 %), hardly a miss
        assert rate >= normal * 0.8 and missed <= 5, (rate, missed, normal)
    time.sleep(max(OUTAGE_S - (time.monotonic() - outage_started), 0))

    latest = node.local_twin("default/local-1")["count"]["reported"]
    registry.start()
    back = time.monotonic()
    wait_until(lambda: (node.registry_twin("default/local-1") or {}).get("twin", {}).get("count", {}).get(
        "reported", 0) >= latest, what="the node's latest values at the registry", timeout=60)
    wait_until(lambda: registry.nodes()["gw-1"]["status"] == "healthy" or None, what="the node healthy again",
               timeout=60)
    caught_up = time.monotonic() - back
    print(f"outage {OUTAGE_S:.0f} s: {normal:.1f} cycles/s before, {min(r for r, _ in during):.1f} at the lowest "
          f"during, caught up {caught_up:.1f} s after the registry came back")
    assert caught_up < 60
