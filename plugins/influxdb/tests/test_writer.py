"""Telemetry of virtual devices written to a fake InfluxDB, through the gateway's durable outbox."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import FakeInflux
from test_lineprotocol import parse_line

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


def endpoint(url: str, extra: str = "") -> str:
    return f"""\
---
kind: Endpoint
name: influx
type: http
properties: {{plugin: influxdb, url: "{url}", org: plant, bucket: readings, token: s3cret{extra}}}
"""


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_telemetry_arrives_as_typed_tagged_points(influx: FakeInflux, write_config: Callable[[str], Path],
                                                        start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + endpoint(influx.url, ", measurement: plant data")))
    reports: list[Any] = []
    gw.bus.subscribe("devices/+/+/telemetry", lambda topic, report: reports.append(report))
    started = time.time()
    await wait_for(lambda: len(influx.lines()) >= 3)
    path, query, headers, _ = influx.writes[0]
    assert path == "/api/v2/write"
    assert query == {"org": ["plant"], "bucket": ["readings"], "precision": ["ns"]}
    assert headers["authorization"] == "Token s3cret" and headers["content-type"].startswith("text/plain")
    points = [parse_line(text) for text in influx.lines()]
    by_time = {round(r.ts * 1e9): r for r in reports}
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
    assert gw.status()["sinks"]["influxdb:default/influx"]["delivered"] >= 3


async def test_data_waits_in_the_outbox_while_influxdb_is_down(write_config: Callable[[str], Path],
                                                               start_gateway: Callable[..., Any]) -> None:
    port = free_port()
    gw: Gateway = await start_gateway(write_config(MODEL + endpoint(f"http://127.0.0.1:{port}")))
    runner = gw.sinks.runners["influxdb:default/influx"]
    runner.max_backoff = 0.2
    await wait_for(lambda: runner.stats.failures >= 1 and gw.store.outboxes.depth.get("influxdb:default/influx"))
    assert runner.stats.state == "failing" and runner.stats.delivered == 0
    with FakeInflux(port) as influx:
        await wait_for(lambda: len(influx.lines()) >= 10)
        counts = [parse_line(text)[2]["count"] for text in influx.lines()]
    assert counts[0] == 0  # the readings taken while it was down came too, first
    assert counts == list(range(len(counts)))
    # the runner counts a batch once its answer is back, a moment after the server has it
    await wait_for(lambda: runner.stats.delivered >= len(counts))


async def test_influxdb_1_database_and_endpoint_changes(influx: FakeInflux, write_config: Callable[[str], Path],
                                                       start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL))
    assert not any(name.startswith("influxdb:") for name in gw.sinks.runners)
    await gw.configuration.apply_documents(f"""\
kind: Endpoint
name: legacy
type: http
properties: {{plugin: influxdb, url: "{influx.url}", database: plant}}
""", actor="test")
    await wait_for(lambda: influx.writes, timeout=5)
    path, query, headers, _ = influx.writes[0]
    assert path == "/write" and query == {"db": ["plant"], "precision": ["ns"]} and "authorization" not in headers
    assert "influxdb:default/legacy" in gw.sinks.runners


async def test_a_misconfigured_endpoint_is_reported_and_skipped(influx: FakeInflux, write_config: Callable[[str], Path],
                                                                start_gateway: Callable[..., Any],
                                                                caplog: Any) -> None:
    bad = endpoint(influx.url).replace("bucket: readings, ", "")  # neither bucket nor database
    gw: Gateway = await start_gateway(write_config(MODEL + bad))
    assert "influxdb:default/influx" not in gw.sinks.runners
    assert "set either `bucket`" in caplog.text
    assert gw.api.twin("default/d1") is not None  # the gateway itself runs on
