"""The pipeline with virtual devices: readings reach the twin, the history and the bus; desired values reach
the device and come back as reported; a bad device never delays the others."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import NotFound, ValueRejected
from gateway.runtime import Gateway

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
  - {name: level, type: float, minimum: 0, maximum: 100}
  - {name: setpoint, type: float, access: ReadWrite, minimum: 0, maximum: 50}
  - {name: enabled, type: boolean, access: ReadWrite}
"""


def virtual_device(name: str, interval: str = "100ms", desired: float | None = None) -> str:
    desired_line = f"\n    desired: {desired}" if desired is not None else ""
    return f"""\
---
kind: Device
name: {name}
model: m
protocol: {{name: virtual}}
properties:
  - {{name: count, collect_interval: {interval}, visitor: {{generator: counter, start: 0, step: 1}}}}
  - {{name: level, collect_interval: {interval}, visitor: {{generator: sine, amplitude: 10, period: 10s, offset: 50}}}}
  - name: setpoint{desired_line}
    collect_interval: {interval}
    visitor: {{generator: memory, initial: 10.0}}
  - {{name: enabled, collect_interval: {interval}, visitor: {{generator: memory, initial: false}}}}
"""


def misbehaving_device(name: str, protocol: str, interval: str = "100ms") -> str:
    return f"""\
---
kind: Device
name: {name}
model: m
timeout: 300ms
protocol: {{name: {protocol}}}
properties:
  - {{name: level, collect_interval: {interval}, visitor: {{value: 5}}}}
"""


async def wait_for(predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


async def test_readings_reach_twin_history_and_bus(write_config: Callable[[str], Path],
                                                   start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1")))
    seen: list[Any] = []
    gw.bus.subscribe("devices/+/+/telemetry", lambda topic, report: seen.append((topic, report)))
    twin = gw.api.twin("default/d1")
    await wait_for(lambda: (twin.properties["count"].reported or 0) >= 5)
    assert twin.state == "online"
    assert twin.properties["count"].quality == "good"
    assert 40 <= twin.properties["level"].reported <= 60
    assert twin.properties["enabled"].reported is False
    assert seen and seen[0][0] == "devices/default/d1/telemetry"
    assert set(seen[-1][1].values) == {"count", "level", "setpoint", "enabled"}
    await gw.store.flush()
    history = await gw.store.history.values("default/d1", "count", time.time() - 60, time.time() + 1)
    values = [v for _, v in history]
    assert values == list(range(len(values)))  # every reading, in order, none twice
    assert len(values) >= 5


async def test_desired_value_reaches_device_and_comes_back_reported(write_config: Callable[[str], Path],
                                                                    start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1", interval="5s")))
    twin = gw.api.twin("default/d1")
    await wait_for(lambda: twin.properties["setpoint"].reported == 10.0)
    started = time.monotonic()
    await gw.api.set_desired("default/d1", "setpoint", "22.5")  # a string, as MQTT apps send
    await wait_for(lambda: twin.properties["setpoint"].reported == 22.5, timeout=2)
    # written at once (the poller is woken), not at the next 5 s cycle
    assert time.monotonic() - started < 1.0
    assert twin.properties["setpoint"].desired == 22.5
    assert not twin.deltas()
    await gw.api.set_desired("default/d1", "enabled", "on")
    await wait_for(lambda: twin.properties["enabled"].reported is True, timeout=2)
    audit = await gw.store.audit.recent()
    assert audit[0]["action"] == "set-desired" and audit[0]["target"] == "default/d1/enabled"


async def test_desired_value_checks(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1")))
    with pytest.raises(ValueRejected, match="above the maximum 50"):
        await gw.api.set_desired("default/d1", "setpoint", 51)
    with pytest.raises(ValueRejected, match="ReadOnly"):
        await gw.api.set_desired("default/d1", "level", 5)
    with pytest.raises(ValueRejected, match="expected a number"):
        await gw.api.set_desired("default/d1", "setpoint", "hot")
    with pytest.raises(NotFound):
        await gw.api.set_desired("default/d2", "setpoint", 5)
    with pytest.raises(NotFound):
        await gw.api.set_desired("default/d1", "nope", 5)
    assert gw.api.twin("default/d1").properties["setpoint"].desired is None


async def test_readings_that_are_no_value_or_too_long_are_bad_and_go_nowhere(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    """Before, a NaN reading became the reported value with good quality and went into the history, the rollups and
    every sink; so did a string of any length."""
    gw: Gateway = await start_gateway(write_config(MODEL + """\
---
kind: DeviceModel
name: sensor
properties:
  - {name: temperature, type: float}
  - {name: broken, type: double}
  - {name: serial, type: string}
  - {name: tag, type: string, max_length: 4}
---
kind: Device
name: s1
model: sensor
protocol: {name: virtual}
properties:
  - {name: temperature, collect_interval: 50ms, visitor: {generator: constant, value: 21.5}}
  - {name: broken, collect_interval: 50ms, visitor: {generator: fault, value: "-inf"}}
  - {name: serial, collect_interval: 50ms, visitor: {generator: constant, value: "%s"}}
  - {name: tag, collect_interval: 50ms, visitor: {generator: constant, value: "abcde"}}
""" % ("x" * 1025)))
    reports: list[Any] = []
    gw.bus.subscribe("devices/default/s1/telemetry", lambda topic, report: reports.append(report))
    twin = gw.api.twin("default/s1")
    await wait_for(lambda: len(reports) >= 3)
    await gw.store.flush()
    expected = {"broken": "cannot convert -inf: not a finite number",
                "serial": "1025 characters, above the max_length 1024", "tag": "5 characters, above the max_length 4"}
    for name, error in expected.items():
        prop = twin.properties[name]
        assert (prop.quality, prop.reported) == ("bad", None) and prop.error is not None and error in prop.error
        assert await gw.store.history.values("default/s1", name, 0, time.time() + 1) == []
    assert all(set(report.values) == {"temperature"} for report in reports)
    assert twin.properties["temperature"].quality == "good" and twin.state == "unhealthy"


async def test_desired_value_survives_restart(write_config: Callable[[str], Path], tmp_path: Path,
                                              start_gateway: Callable[..., Any]) -> None:
    config = write_config(MODEL + virtual_device("d1", desired=12))
    gw: Gateway = await start_gateway(config)
    await wait_for(lambda: gw.api.twin("default/d1").properties["setpoint"].reported == 12.0)
    await gw.api.set_desired("default/d1", "setpoint", 30)
    await wait_for(lambda: gw.api.twin("default/d1").properties["setpoint"].reported == 30.0)
    await gw.stop()
    # Restart: the value set through the API wins over the unchanged file, and the device gets it again.
    gw2: Gateway = await start_gateway(config, tmp_path / "data")
    assert gw2.api.twin("default/d1").properties["setpoint"].desired == 30.0
    await wait_for(lambda: gw2.api.twin("default/d1").properties["setpoint"].reported == 30.0)
    await gw2.stop()
    # The file's desired value changed: the file wins.
    config = write_config(MODEL + virtual_device("d1", desired=14))
    gw3: Gateway = await start_gateway(config, tmp_path / "data")
    assert gw3.api.twin("default/d1").properties["setpoint"].desired == 14.0
    await gw3.api.set_desired("default/d1", "setpoint", 45)
    await gw3.stop()
    # The model changed: a stored value it no longer takes is dropped for the file's (a store may also hold what
    # older versions took, such as a string of any length), never written to the device again.
    config = write_config(MODEL.replace("maximum: 50", "maximum: 40") + virtual_device("d1", desired=14))
    gw4: Gateway = await start_gateway(config, tmp_path / "data")
    assert gw4.api.twin("default/d1").properties["setpoint"].desired == 14.0


def lateness_ms(gw: Gateway, device_id: str) -> list[float]:
    return [v * 1000 for v in gw.devices.pollers[device_id].stats.lateness]


@pytest.mark.parametrize("bad_protocol", ["test-hang", "test-fail", "test-slow", "test-buggy"])
async def test_bad_device_never_delays_the_others(write_config: Callable[[str], Path],
                                                 start_gateway: Callable[..., Any], bad_protocol: str) -> None:
    devices = "".join(virtual_device(f"good-{i}", interval="50ms") for i in range(5))
    bad = "".join(misbehaving_device(f"bad-{i}", bad_protocol, interval="50ms") for i in range(3))
    gw: Gateway = await start_gateway(write_config(MODEL + devices + bad))
    await asyncio.sleep(2.0)
    for i in range(5):
        samples = lateness_ms(gw, f"default/good-{i}")
        assert len(samples) >= 30, f"good-{i} polled only {len(samples)} times"
        samples.sort()
        p99 = samples[int(len(samples) * 0.99) - 1]
        # The bad devices hang for their whole 300 ms budget each cycle; a good device that waited on them would
        # be late by about that much. The margins leave room for a busy 2-core CI box.
        assert p99 < 50, f"good-{i} p99 lateness {p99:.1f} ms next to {bad_protocol} devices"
        assert samples[-1] < 250, f"good-{i} waited {samples[-1]:.1f} ms once next to {bad_protocol} devices"
        assert gw.api.twin(f"default/good-{i}").state == "online"
    expected = "online" if bad_protocol == "test-slow" else "offline"
    for i in range(3):
        assert gw.api.twin(f"default/bad-{i}").state == expected
    if bad_protocol == "test-hang":
        assert "timeout budget" in gw.api.twin("default/bad-0").state_reason
    if bad_protocol == "test-buggy":
        assert "internal error: KeyError" in gw.api.twin("default/bad-0").state_reason


async def test_device_that_comes_back_goes_online(write_config: Callable[[str], Path],
                                                  start_gateway: Callable[..., Any]) -> None:
    text = MODEL + misbehaving_device("flaky", "test-flaky").replace("{name: test-flaky}",
                                                              "{name: test-flaky, config: {fail_opens: 2}}")
    gw: Gateway = await start_gateway(write_config(text))
    states: list[str] = []
    gw.bus.subscribe("devices/+/+/state", lambda topic, change: states.append(change.state))
    twin = gw.api.twin("default/flaky")
    await wait_for(lambda: twin.state == "online", timeout=6)
    assert twin.properties["level"].reported == 5.0
    assert "online" in states
    status = gw.status()
    assert status["devices"]["online"] == 1


async def test_a_protocol_may_keep_its_reconnect_backoff_short(write_config: Callable[[str], Path],
                                                               start_gateway: Callable[..., Any]) -> None:
    """Six failed connects back off 0.5 + 1 + 2 + 4 + 8 + 16 s by default; a protocol whose devices cost nothing to
    try again (a KubeEdge mapper's, whose values are pushed) caps the wait with `max_backoff`."""
    text = MODEL + misbehaving_device("eager", "test-flaky-eager").replace(
        "{name: test-flaky-eager}", "{name: test-flaky-eager, config: {fail_opens: 6}}")
    gw: Gateway = await start_gateway(write_config(text))
    await wait_for(lambda: gw.api.twin("default/eager").state == "online", timeout=8)


async def test_a_read_that_brings_nothing_leaves_the_state_alone(write_config: Callable[[str], Path],
                                                                 start_gateway: Callable[..., Any]) -> None:
    """A device that pushes its values (a KubeEdge mapper's, an MQTT device) may have nothing new when it is read:
    that says nothing about it, so it stays unknown instead of turning online with no value ever seen."""
    gw: Gateway = await start_gateway(write_config(MODEL + misbehaving_device("quiet", "test-quiet", "20ms")))
    stats = await wait_for(lambda: (s := gw.api.poll_stats("default/quiet")) is not None and s.cycles >= 5 and s)
    assert stats.read_errors == 0
    twin = gw.api.twin("default/quiet")
    assert twin.state == "unknown"
    assert twin.properties["level"].quality == "unknown"
async def test_a_device_that_sends_its_values_itself_goes_offline_when_silent_and_back_without_reconnecting(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    """Reads that bring nothing leave the state alone (no "online" before the first value); DeviceSilent makes the
    device offline without closing its connection, so the next value brings it back at once."""
    from tests.protocols import PushProtocol

    gw: Gateway = await start_gateway(write_config(MODEL + misbehaving_device("pusher", "test-push", "20ms")))
    twin, stats = gw.api.twin("default/pusher"), gw.api.poll_stats("default/pusher")
    assert stats is not None
    await wait_for(lambda: stats.cycles >= 5)
    assert twin.state == "unknown"
    assert PushProtocol.opens == 1 and PushProtocol.gateways == [gw.api]

    PushProtocol.pushed["default/pusher"] = [4.0, 5.0]
    await wait_for(lambda: twin.state == "online")
    assert twin.properties["level"].reported == 5.0

    PushProtocol.silent.add("default/pusher")
    await wait_for(lambda: twin.state == "offline")
    assert twin.state_reason == "no message for 5 s" and twin.properties["level"].quality == "bad"
    cycles = stats.read_errors
    await wait_for(lambda: stats.read_errors >= cycles + 5)
    PushProtocol.silent.clear()
    PushProtocol.pushed["default/pusher"] = [6.0]
    await wait_for(lambda: twin.state == "online")
    assert twin.properties["level"].reported == 6.0 and twin.properties["level"].quality == "good"
    assert PushProtocol.opens == 1
async def test_a_protocol_keeps_its_files_in_the_data_dir(write_config: Callable[[str], Path], tmp_path: Path,
                                                         start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + misbehaving_device("keeper", "test-files")))
    twin = gw.api.twin("default/keeper")
    await wait_for(lambda: twin.state == "online", timeout=6)
    assert (tmp_path / "data" / "test-files" / "keeper").read_text() == "opened"


async def test_pushed_values_reach_the_twin_and_the_bus_between_reads(write_config: Callable[[str], Path],
                                                                        start_gateway: Callable[..., Any]) -> None:
    text = MODEL + misbehaving_device("pusher", "test-pushing", interval="1h").replace(
        "visitor: {value: 5}}", "visitor: {value: 5}}\n  - {name: count, collect_interval: 1h, visitor: {value: 3}}")
    gw: Gateway = await start_gateway(write_config(text))
    reports: list[dict[str, Any]] = []
    gw.bus.subscribe("devices/+/+/telemetry", lambda topic, report: reports.append(dict(report.values)))
    twin = gw.api.twin("default/pusher")
    # read once at the start (5, 3), then only pushed: the next read is an hour away
    await wait_for(lambda: twin.properties["level"].reported == 10.0, timeout=5)
    assert twin.properties["count"].reported == 6
    assert twin.properties["count"].quality == "good"  # the bad push was followed by a good one
    assert reports == [{"level": 5.0, "count": 3}, {"level": 10.0, "count": 6}]
    assert gw.api.poll_stats("default/pusher").pushes == 2
    assert twin.state == "online"


async def test_status_reports_lateness(write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1", interval="20ms")))
    await asyncio.sleep(0.5)
    status = gw.status()
    assert status["cycles"] >= 15
    assert status["lateness_ms"]["p50"] is not None and status["lateness_ms"]["p50"] < 10
    samples = lateness_ms(gw, "default/d1")
    assert statistics.fmean(samples) < 10


async def test_a_blocked_loop_delays_cycles_but_skips_no_report(write_config: Callable[[str], Path],
                                                                 start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(MODEL + virtual_device("d1", interval="20ms")))
    loop = asyncio.get_running_loop()
    for delay in (0.2, 0.35, 0.5):
        loop.call_later(delay, time.sleep, 0.07)  # the loop stalls for 3.5 intervals
    await asyncio.sleep(1.0)
    await gw.store.flush()
    history = await gw.store.history.values("default/d1", "count", time.time() - 60, time.time() + 1)
    values = [v for _, v in history]
    assert values == list(range(len(values)))  # every reading reported once, none skipped
    assert gw.devices.pollers["default/d1"].stats.missed >= 3


async def test_a_property_failing_on_its_own_schedule_keeps_the_device_unhealthy(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    """With properties on schedules of different intervals, a failing one made the device unhealthy on the cycles
    that read it and online on the others: a warning a cycle. The state follows every property's last reading."""
    device = """\
---
kind: Device
name: mixed
model: m
protocol: {name: virtual}
properties:
  - {name: count, collect_interval: 30ms, visitor: {generator: counter}}
  - {name: level, collect_interval: 200ms, visitor: {generator: fault, value: nan}}
"""
    gw: Gateway = await start_gateway(write_config(MODEL + device))
    twin = gw.api.twin("default/mixed")
    await wait_for(lambda: twin.state == "unhealthy")
    changes: list[str] = []
    gw.api.subscribe("devices/default/mixed/state", lambda topic, change: changes.append(change.state))
    stats = gw.api.poll_stats("default/mixed")
    assert stats is not None
    cycles = stats.cycles
    await wait_for(lambda: stats.cycles >= cycles + 20)  # several cycles of each schedule
    assert twin.state == "unhealthy" and "level" in twin.state_reason
    assert changes == [], "the state stays unhealthy while the property fails"
    assert twin.properties["count"].quality == "good"
