"""Telemetry of virtual devices written to a fake InfluxDB through the gateway's durable outbox, with the endpoint
in the older form (`type: http` + `plugin: influxdb`) and as `type: influxdb` with a Route."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import FakeInflux
from test_lineprotocol import parse_line

from gateway.errors import ResourceError
from gateway.runtime import Gateway
from gateway.testing import free_port

MODEL = """\
kind: Gateway
name: test-gw
eventbus: {url: none}
store: {flush_interval: 50ms}
---
kind: DeviceModel
name: m
properties:
  - {name: count, type: int}
  - {name: level, type: float}
  - {name: enabled, type: boolean, access: ReadWrite}
---
kind: Device
name: d1
model: m
protocol: {name: virtual}
properties:
  - {name: count, collect_interval: 50ms, visitor: {generator: counter, start: 0, step: 1}}
  - {name: level, collect_interval: 50ms, visitor: {generator: sine, amplitude: 10, period: 10s, offset: 50}}
  - {name: enabled, collect_interval: 50ms, visitor: {generator: memory, initial: true}}
"""


FORMS = ("older", "route")


def endpoint(url: str, extra: str = "", form: str = "older") -> str:
    """An InfluxDB endpoint in the older form (`type: http` + `plugin: influxdb`, no route: it implies one) or as
    `type: influxdb` with a Route from the bus."""
    if form == "older":
        return f"""\
---
kind: Endpoint
name: influx
type: http
properties: {{plugin: influxdb, url: "{url}", org: plant, bucket: readings, token: s3cret{extra}}}
"""
    return f"""\
---
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: influx
type: influxdb
properties: {{url: "{url}", org: plant, bucket: readings, token: s3cret{extra}}}
---
kind: Route
name: to-influx
source: bus
source_resource: {{topic: "devices/+/+/telemetry"}}
target: influx
"""


def outbox(form: str) -> str:
    """The outbox (and sink) of the endpoint: the older form keeps the one the plugin always had."""
    return "influxdb:default/influx" if form == "older" else "route:default/to-influx"


async def fieldgate_check(path: Path) -> tuple[int, str]:
    """`fieldgate check PATH` in its own process: its exit code and what it wrote on stderr."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "check", str(path),
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        _, stderr = await process.communicate()
    return process.returncode or 0, stderr.decode()


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


@pytest.mark.parametrize("form", FORMS)
async def test_telemetry_arrives_as_typed_tagged_points(influx: FakeInflux, write_config: Callable[[str], Path],
                                                        start_gateway: Callable[..., Any], form: str) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + endpoint(influx.url, ", measurement: plant data", form)))
    reports: list[Any] = []
    gw.bus.subscribe("devices/+/+/telemetry", lambda topic, report: reports.append(report))
    started = time.time()
    await wait_for(lambda: len(influx.lines()) >= 3)
    path, query, headers, _ = influx.writes[0]
    assert path == "/api/v2/write"
    assert query == {"org": ["plant"], "bucket": ["readings"], "precision": ["ns"]}
    assert headers["authorization"] == "Token s3cret" and headers["content-type"].startswith("text/plain")
    points = [parse_line(text) for text in influx.lines()]
    by_time = {int(r.ts * 1000) * 1_000_000: r for r in reports}  # routes carry report times in milliseconds
    counts = []
    for measurement, tags, fields, ts in points:
        assert measurement == "plant data"
        assert tags == {"device": "default/d1", "node": "test-gw"}
        assert started - 5 < ts / 1e9 < time.time() + 1
        if ts in by_time:  # reports published before our subscription are not in `reports`
            assert fields == by_time[ts].values
        assert isinstance(fields["count"], int) and not isinstance(fields["count"], bool)
        assert isinstance(fields["level"], float) and 40 <= fields["level"] <= 60
        assert fields["enabled"] is True
        counts.append(fields["count"])
    assert counts == list(range(counts[0], counts[0] + len(counts)))  # in order, none twice
    assert any(ts in by_time for *_, ts in points)
    # the runner counts a batch once its answer is back, a moment after the server has it
    await wait_for(lambda: gw.status()["sinks"][outbox(form)]["delivered"] >= 3)


@pytest.mark.parametrize("form", FORMS)
async def test_data_waits_in_the_outbox_while_influxdb_is_down(write_config: Callable[[str], Path],
                                                               start_gateway: Callable[..., Any], form: str) -> None:
    port = free_port()
    gw: Gateway = await start_gateway(write_config(MODEL + endpoint(f"http://127.0.0.1:{port}", form=form)))
    runner = gw.sinks.runners[outbox(form)]
    runner.max_backoff = 0.2
    await wait_for(lambda: runner.stats.failures >= 1 and gw.store.outboxes.depth.get(outbox(form)))
    assert runner.stats.state == "failing" and runner.stats.delivered == 0
    with FakeInflux(port) as influx:
        await wait_for(lambda: len(influx.lines()) >= 10)
        counts = [parse_line(text)[2]["count"] for text in influx.lines()]
    assert counts[0] == 0  # the readings taken while it was down came too, first
    assert counts == list(range(len(counts)))
    # the runner counts a batch once its answer is back, a moment after the server has it
    await wait_for(lambda: runner.stats.delivered >= len(counts))


@pytest.mark.parametrize("form", FORMS)
async def test_influxdb_1_database_and_endpoint_changes(influx: FakeInflux, write_config: Callable[[str], Path],
                                                       start_gateway: Callable[..., Any], form: str) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL))
    assert not any(name.startswith("influxdb:") for name in gw.sinks.runners)
    documents = endpoint(influx.url, form=form).replace("org: plant, bucket: readings, token: s3cret",
                                                        "database: plant")
    await gw.configuration.apply_documents(documents, actor="test")
    await wait_for(lambda: influx.writes, timeout=5)
    path, query, headers, _ = influx.writes[0]
    assert path == "/write" and query == {"db": ["plant"], "precision": ["ns"]} and "authorization" not in headers
    assert outbox(form) in gw.sinks.runners


# Before endpoint properties were checked at load, this endpoint was logged and skipped when the gateway started; now
# the configuration is refused with the file, the document and the field, so a bad endpoint still never runs.
@pytest.mark.parametrize("form", FORMS)
async def test_a_misconfigured_endpoint_is_refused_at_load(influx: FakeInflux, write_config: Callable[[str], Path],
                                                           start_gateway: Callable[..., Any], form: str) -> None:
    bad = endpoint(influx.url, form=form).replace("bucket: readings, ", "")  # neither bucket nor database
    path = write_config(MODEL + bad)
    document = 4 if form == "older" else 5
    expected = (f"{path}: document {document} (Endpoint influx): $.properties.bucket: set either `bucket` "
                "(InfluxDB 2/3) or `database` (InfluxDB 1.x)")
    with pytest.raises(ResourceError) as info:
        await start_gateway(path)
    assert info.value.problems == [expected]
    returncode, stderr = await fieldgate_check(path)
    assert returncode == 2 and expected in stderr, stderr


def test_plugins_lists_the_influxdb_sink() -> None:
    listed = subprocess.run([sys.executable, "-m", "gateway", "plugins", "--json"], capture_output=True, text=True,
                            timeout=60, check=True)
    plugins = {p["name"]: p for p in map(json.loads, listed.stdout.splitlines())}
    assert "register_sinks" in plugins["influxdb"]["hooks"]
    assert plugins["influxdb"]["serves"]["register_sinks"] == ["influxdb"]


async def test_an_upgraded_box_delivers_what_waited_in_the_older_outbox(
        influx: FakeInflux, write_config: Callable[[str], Path], start_gateway: Callable[..., Any],
        tmp_path: Path) -> None:
    # What the plugin's own writer left in its outbox before the upgrade: lines of line protocol.
    waiting = b"telemetry,device=default/d1,node=test-gw count=-1i 1700000000000000000"
    async with Gateway.from_path(write_config(MODEL, "before.yaml"), tmp_path / "data") as before:
        before.api.add_outbox("influxdb:default/influx", "devices/default/d1/telemetry", waiting)
        await before.api.flush()
    gw: Gateway = await start_gateway(write_config(MODEL + endpoint(influx.url)), tmp_path / "data")
    await wait_for(lambda: len(influx.lines()) >= 3)
    assert influx.lines()[0] == waiting.decode()  # delivered first, as it was written
    assert [parse_line(text)[1]["device"] for text in influx.lines()[1:]] == ["default/d1"] * (len(influx.lines()) - 1)
    await wait_for(lambda: gw.store.outboxes.depth.get("influxdb:default/influx") == 0)
