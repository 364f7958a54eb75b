"""Store and forward under failure: a 60 s broker outage under load, and SIGKILL at random moments."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import Gateway
from gateway.store import db_path
from tests.conftest import FIELDGATE, Mosquitto, free_port
from tests.eventbus.test_eventbus import mqtt_client, wait_connected
from tests.test_runtime import MODEL, virtual_device
from tests.test_store import wait_healthy

OUTAGE_S = float(os.environ.get("FIELDGATE_OUTAGE_SECONDS", "60"))
DEVICES = 20


def load_config(broker_url: str, extra: str = "") -> str:
    devices = "".join(virtual_device(f"d{i}", interval="50ms") for i in range(DEVICES))
    return MODEL.replace("eventbus: {url: none}", f"eventbus: {{url: \"{broker_url}\"}}{extra}") + devices


def counts_by_device(messages: list[tuple[str, Any]]) -> dict[str, list[int]]:
    result: dict[str, list[int]] = {}
    for topic, data in messages:
        device = topic.split("/")[3]
        if "count" in data["values"]:
            result.setdefault(device, []).append(data["values"]["count"])
    return result


async def drain(queue: asyncio.Queue[tuple[str, Any]], until: Callable[[list[tuple[str, Any]]], bool],
                timeout: float) -> list[tuple[str, Any]]:
    messages: list[tuple[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not until(messages):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            messages.append(await asyncio.wait_for(queue.get(), remaining))
        except TimeoutError:
            break
    return messages


@pytest.mark.slow
async def test_broker_outage_loses_nothing(mosquitto: Mosquitto, write_config: Callable[[str], Path],
                                           start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(load_config(mosquitto.url)))
    await wait_connected(gw)
    async with mqtt_client(mosquitto, "fieldgate/#") as (_, before_queue):
        before = counts_by_device(await drain(before_queue, lambda m: False, 2.0))
    assert len(before) == DEVICES
    mosquitto.stop()
    outage_started = time.monotonic()
    await asyncio.sleep(OUTAGE_S)
    during = {f"default/d{i}": gw.twin(f"default/d{i}").properties["count"].reported for i in range(DEVICES)}
    depth = gw.store.outbox_depth.get("eventbus", 0)
    assert depth >= DEVICES * OUTAGE_S * 20 * 0.8  # 20 reports/s per device waited in the outbox
    mosquitto.start()
    async with mqtt_client(mosquitto, "fieldgate/#") as (_, after_queue):
        def caught_up(messages: list[tuple[str, Any]]) -> bool:
            seen = counts_by_device(messages)
            return len(seen) == DEVICES and all(seen[d.split("/")[1]][-1] >= during[d] for d in during)

        after = counts_by_device(await drain(after_queue, caught_up, OUTAGE_S + 60))
    downtime = time.monotonic() - outage_started
    for device, counts in after.items():
        assert counts == list(range(counts[0], counts[0] + len(counts))), f"{device}: gap or repeat in the replay"
        assert counts[0] <= before[device][-1] + 1, f"{device}: readings from the outage start are missing"
        assert counts[-1] >= during[f"default/{device}"]
    assert len(after) == DEVICES
    print(f"\noutage {OUTAGE_S:.0f}s: {depth} messages waited; all delivered in order {downtime - OUTAGE_S:.1f}s "
          "after the broker came back")


@pytest.mark.slow
async def test_sigkill_under_load_loses_nothing_from_the_outbox(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "plant.yaml"
    config.write_text(load_config(mosquitto.url, f"\nhttp: {{listen: \"127.0.0.1:{port}\"}}"))
    data = tmp_path / "data"
    rng = random.Random(11)
    async with mqtt_client(mosquitto, "fieldgate/#") as (_, queue):
        for round_ in range(11):
            proc = subprocess.Popen([*FIELDGATE,  # noqa: ASYNC220  (started, not waited for, here) "run", "-c", str(config), "--data-dir", str(data),
                                     "--log-level", "warning"], stderr=subprocess.PIPE)
            try:
                await asyncio.to_thread(wait_healthy, port, proc)
                await asyncio.sleep(rng.uniform(0.2, 1.5) if round_ < 10 else 3.0)
            finally:
                proc.send_signal(signal.SIGKILL if round_ < 10 else signal.SIGTERM)
                await asyncio.to_thread(proc.wait, 20)
        await asyncio.sleep(0.5)
        received = set()
        while not queue.empty():
            topic, payload = queue.get_nowait()
            received.add((topic.split("/")[3], payload["ts"], payload["values"].get("count")))
    with sqlite3.connect(db_path(data)) as db:
        stored = db.execute("SELECT device, ts, value FROM history JOIN series ON series.id = history.series "
                            "WHERE property = 'count'").fetchall()
        (left,) = db.execute("SELECT count(*) FROM outbox").fetchone()
    assert len(stored) > 11 * DEVICES * 5
    missing = [row for row in stored if (row[0].split("/")[1], row[1], row[2]) not in received]
    assert not missing, f"{len(missing)} readings entered the outbox but never arrived, e.g. {missing[:3]}"
    assert left == 0
