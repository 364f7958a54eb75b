"""Twins up and down between a real registry and a real gateway process with virtual devices: a device applied at
the registry runs on the node, its reported values come back, a desired value set at the registry reaches the
device through the node's desired path, and all of it survives the registry being away for a while."""

from __future__ import annotations

import json
import math
import ssl
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.errors import NotFound, ValueRejected
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until

REMOTE = """\
kind: DeviceModel
name: thermo
properties:
  - {name: temperature, type: float, access: ReadOnly}
  - {name: setpoint, type: float, access: ReadWrite, minimum: 5, maximum: 30}
---
kind: Device
name: boiler-1
model: thermo
node: gw-1
protocol: {name: virtual, config: {}}
properties:
  - {name: temperature, collect_interval: 100ms, visitor: {generator: constant, value: 21.0}}
  - {name: setpoint, collect_interval: 100ms, visitor: {generator: memory, initial: 20.0}}
"""


class Node:
    """A joined gateway process and clients for its local API and the registry API."""

    def __init__(self, registry: Registry, tmp_path: Path) -> None:
        self.registry = registry
        self.data_dir = tmp_path / "gw"
        assert join(registry, registry.token(), self.data_dir, "--name", "gw-1").returncode == 0
        self.port = free_port()
        self.config = tmp_path / "gw.yaml"
        self.config.write_text(textwrap.dedent(f"""\
            kind: Gateway
            name: gw-1
            http: {{listen: "127.0.0.1:{self.port}"}}
            eventbus: {{url: none}}
            ---
            kind: DeviceModel
            name: local-model
            properties:
              - {{name: count, type: int, access: ReadOnly}}
              - {{name: broken, type: float, access: ReadOnly}}
              - {{name: gain, type: float, access: ReadWrite}}
            ---
            kind: Device
            name: local-1
            model: local-model
            protocol: {{name: virtual, config: {{}}}}
            properties:
              - {{name: count, collect_interval: 100ms, visitor: {{generator: counter}}}}
              - {{name: broken, collect_interval: 100ms, visitor: {{generator: fault, value: nan}}}}
              - {{name: gain, collect_interval: 100ms, visitor: {{generator: memory, initial: 1.0}}}}
            """))
        token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir", str(self.data_dir)],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        self.local = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                  headers={"Authorization": f"Bearer {token}"}, timeout=10)
        self.operator = self.api(registry.cli("token", "create", "--role", "operator").stdout.strip())
        self.viewer = self.api(registry.cli("token", "create", "--role", "viewer").stdout.strip())
        self.process: subprocess.Popen[bytes] | None = None

    def api(self, token: str) -> httpx.Client:
        context = ssl.create_default_context(cafile=self.registry.data_dir / "ca.pem")
        return httpx.Client(base_url=self.registry.url, verify=context,
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)

    def start(self) -> None:
        self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(self.config), "--data-dir", str(self.data_dir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def registry_twin(self, device: str) -> dict[str, Any] | None:
        try:
            answer = self.viewer.get(f"/api/v1/devices/{device}")
        except httpx.HTTPError:
            return None
        return answer.json() if answer.status_code == 200 else None

    def local_twin(self, device: str) -> dict[str, Any]:
        answer = self.local.get(f"/api/v1/devices/{device}")
        assert answer.status_code == 200, answer.text
        twin: dict[str, Any] = answer.json()["twin"]
        return twin

    def close(self) -> None:
        if self.process is not None:
            stop(self.process)
        for client in (self.local, self.operator, self.viewer):
            client.close()


@pytest.fixture
def node(registry: Registry, tmp_path: Path) -> Iterator[Node]:
    started = Node(registry, tmp_path)
    yield started
    started.close()


def reported(node: Node, device: str, prop: str, value: Any) -> dict[str, Any] | None:
    twin = node.registry_twin(device)
    return twin if twin and twin["twin"].get(prop, {}).get("reported") == value else None


def test_twins_flow_up_and_desired_values_flow_down(node: Node, registry: Registry, tmp_path: Path) -> None:
    from gateway.uplink.join import client_ssl_context
    from gateway.wire import MAX_HEARTBEAT, MIN_REPORT_INTERVAL, TWINS_BUDGET

    # the registry bounds what a node reports: how many devices at once, and how often
    report = {"device": "default/x", "state": "online", "properties": {"p": {"reported": 1}}}
    with httpx.Client(base_url=registry.url, verify=client_ssl_context(node.data_dir), timeout=10) as client:
        assert client.post("/api/v1/heartbeat", json={"twins": [report] * 2001}).status_code == 400
        assert client.post("/api/v1/heartbeat", json={"twins": [report]}).status_code == 200
        too_soon = client.post("/api/v1/heartbeat", json={"twins": [report]})
        assert too_soon.status_code == 429 and "more often" in too_soon.json()["detail"]
        assert client.post("/api/v1/heartbeat", json={}).status_code == 200  # a heartbeat without twins is fine
        # the body limit fits twice a node's largest report; beyond it, 413 before the body is read
        time.sleep(MIN_REPORT_INTERVAL)
        large = {"device": "default/x", "state": "online",
                 "properties": {f"p{i}": {"reported": "y" * 60000} for i in range(2 * TWINS_BUDGET // 60000)}}
        assert client.post("/api/v1/heartbeat", json={"twins": [large]}).status_code == 200
        over = client.post("/api/v1/heartbeat", content=bytes(MAX_HEARTBEAT + 1),
                           headers={"content-type": "application/json"})
        assert over.status_code == 413
    node.start()
    (tmp_path / "remote.yaml").write_text(REMOTE)
    registry.cli("apply", "-f", str(tmp_path / "remote.yaml"))

    # up: the registry's device runs on the node and its reported values and state come back
    twin = wait_until(lambda: reported(node, "default/boiler-1", "setpoint", 20.0), what="the reported twin")
    assert twin["node"] == "gw-1" and twin["state"] == "online" and twin["applied_at_registry"]
    assert twin["twin"]["temperature"]["reported"] == 21.0 and twin["twin"]["temperature"]["quality"] == "good"
    listed = {d["name"]: d for d in node.viewer.get("/api/v1/nodes/gw-1/devices").json()}
    assert set(listed) == {"boiler-1", "local-1"} and not listed["local-1"]["applied_at_registry"]
    broken = listed["local-1"]["twin"]["broken"]  # a NaN reading is a bad reading, never a reported value
    assert broken["quality"] == "bad" and broken["reported"] is None and "not a finite number" in broken["error"]

    # down: checked at the registry against the model, then through the node's desired path
    assert node.viewer.put("/api/v1/devices/default/boiler-1/desired",
                           json={"desired": {"setpoint": 22.5}}).status_code == 403
    too_high = node.operator.put("/api/v1/devices/default/boiler-1/desired", json={"desired": {"setpoint": 99}})
    assert too_high.status_code == 400 and "above the maximum" in too_high.json()["detail"]
    for text in ("nan", "-Infinity"):  # no value, whatever the bounds
        refused = node.operator.put("/api/v1/devices/default/boiler-1/desired", json={"desired": {"setpoint": text}})
        assert refused.status_code == 400 and "setpoint: expected a finite number" in refused.json()["detail"]
    read_only = node.operator.put("/api/v1/devices/default/boiler-1/desired", json={"desired": {"temperature": 1}})
    assert read_only.status_code == 400 and "ReadOnly" in read_only.json()["detail"]
    assert node.operator.put("/api/v1/devices/default/nothing/desired",
                             json={"desired": {"x": 1}}).status_code == 404
    accepted = node.operator.put("/api/v1/devices/default/boiler-1/desired", json={"desired": {"setpoint": "22.5"}})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["twin"]["setpoint"]["desired"] == 22.5
    assert accepted.json()["twin"]["setpoint"]["desired_status"] in ("pending", "delivered")
    wait_until(lambda: node.local_twin("default/boiler-1")["setpoint"]["reported"] == 22.5,
               what="the desired value written to the device")
    assert node.local_twin("default/boiler-1")["setpoint"]["desired"] == 22.5
    synced = wait_until(lambda: reported(node, "default/boiler-1", "setpoint", 22.5), what="the confirmed value")
    assert synced["twin"]["setpoint"]["desired_status"] == "in sync"

    # a device only the node knows: the node refuses a value for its read-only property, and says why
    set_local = registry.cli("set-desired", "default/local-1", "count=5")
    assert "desired count=5" in set_local.stdout

    def refused() -> dict[str, Any] | None:
        twin = node.registry_twin("default/local-1")
        return twin if twin and twin["twin"]["count"].get("desired_status") == "rejected" else None

    assert "ReadOnly" in wait_until(refused, what="the refusal")["twin"]["count"]["desired_error"]
    # NaN as a number is refused at the registry; as text, which only the node can judge, by the node
    not_a_number = registry.cli("set-desired", "default/local-1", "gain=NaN", check=False)
    assert not_a_number.returncode == 2 and "gain: expected a finite number" in not_a_number.stderr
    registry.cli("set-desired", "default/local-1", "gain=nan")

    def refused_gain() -> dict[str, Any] | None:
        twin = node.registry_twin("default/local-1")
        return twin if twin and twin["twin"]["gain"].get("desired_status") == "rejected" else None

    assert "gain: expected a finite number" in wait_until(refused_gain, what="the node's refusal")["twin"]["gain"][
        "desired_error"]
    assert node.local_twin("default/local-1")["gain"]["desired"] is None

    # the registry goes away: the node keeps running, then gets the pending value and reports its latest values
    assert registry.process is not None
    stop(registry.process)
    count_before = node.local_twin("default/local-1")["count"]["reported"]
    registry.cli("set-desired", "default/boiler-1", "setpoint=25")
    wait_until(lambda: node.local_twin("default/local-1")["count"]["reported"] > count_before + 10,
               what="the node polling on while the registry is away")
    assert node.local_twin("default/boiler-1")["setpoint"]["reported"] == 22.5
    registry.start()
    back = wait_until(lambda: reported(node, "default/boiler-1", "setpoint", 25.0), what="the pending value applied")
    assert back["twin"]["setpoint"]["desired_status"] == "in sync"
    latest = node.local_twin("default/local-1")["count"]["reported"]
    wait_until(lambda: (node.registry_twin("default/local-1") or {}).get("twin", {}).get("count", {}).get(
        "reported", 0) >= latest, what="the latest reported value after the outage")

    lines = [json.loads(line) for line in registry.cli("devices", "--json").stdout.splitlines()]
    assert {(d["node"], d["name"]) for d in lines} == {("gw-1", "boiler-1"), ("gw-1", "local-1")}
    assert "setpoint=25.0 (desired 25.0, in sync)" in registry.cli("devices").stdout



async def test_the_registry_keeps_the_latest_twin_and_versions_desired_values(db_url: str | None,
                                                                               tmp_path: Path) -> None:
    from gateway import wire
    from gateway.registry import twins
    from gateway.registry.store import RegistryStore

    def report(device: str, value: Any) -> wire.DeviceReport:
        return wire.DeviceReport(device=device, state="online", properties={
            "sp": wire.PropertyReport(reported=value, reported_at=1.0, quality="good")})

    async with RegistryStore(tmp_path / "registry", db_url) as store:
        await store.add_node("gw-1", "ab", {}, 1.0)
        assert await twins.sync(store, "gw-1", [report("default/d1", 1), report("default/d2", 2)], True, 0,
                                None) is None
        await twins.sync(store, "gw-1", [report("default/d2", 3)], False, 0, None)  # only what changed
        assert [(v["name"], v["twin"]["sp"]["reported"]) for v in await twins.device_views(store)] == [
            ("d1", 1), ("d2", 3)]
        # by name and state only (a whole set too large for one heartbeat): the properties stay as they were
        await twins.sync(store, "gw-1", [twins.DeviceReport(device="default/d2", state="offline")], False, 0, None)
        assert [(v["name"], v["state"], v["twin"]["sp"]["reported"]) for v in await twins.device_views(store)] == [
            ("d1", "online", 1), ("d2", "offline", 3)]
        await twins.sync(store, "gw-1", [report("default/d2", 4)], True, 0, None)  # the whole set: d1 is gone
        assert [(v["name"], v["twin"]["sp"]["reported"]) for v in await twins.device_views(store)] == [("d2", 4)]

        # without the model, the registry still refuses what no property can hold
        for bad, reason in ((math.inf, "expected a finite number"), ([1], "expected a number, a boolean or a string"),
                            ("x" * (twins.MAX_UNCHECKED_TEXT + 1), "longer than any property holds")):
            with pytest.raises(ValueRejected, match=reason):
                await twins.set_desired(store, "default", "d2", {"sp": bad})
        view = await twins.set_desired(store, "default", "d2", {"sp": 7})
        assert view["twin"]["sp"]["desired_status"] == "pending"
        with pytest.raises(NotFound):
            await twins.set_desired(store, "default", "d2", {"nope": 1})
        [value] = await twins.sync(store, "gw-1", None, False, 0, None) or []
        assert (value.device, value.property, value.value, value.version) == ("default/d2", "sp", 7, 1)
        assert await twins.sync(store, "gw-1", None, False, 1, None) is None  # taken already
        ack = wire.DesiredAck(version=1, errors=[wire.DesiredError(device="default/d2", property="sp", version=1,
                                                                   error="sp: too hot")])
        await twins.sync(store, "gw-1", None, False, 1, ack)
        [view] = await twins.device_views(store, node="gw-1")
        assert view["twin"]["sp"]["desired_status"] == "rejected" and view["twin"]["sp"]["desired_error"] == \
            "sp: too hot"
        await twins.set_desired(store, "default", "d2", {"sp": 4})
        [value] = await twins.sync(store, "gw-1", None, False, 1, None) or []
        assert value.version == 2
        await twins.sync(store, "gw-1", None, False, 2, wire.DesiredAck(version=2))
        [view] = await twins.device_views(store, node="gw-1")
        assert view["twin"]["sp"]["desired_status"] == "in sync" and "desired_error" not in view["twin"]["sp"]
        await store.remove_node("gw-1")
        assert await twins.device_views(store) == []
