"""Store and forward under failure: a 60 s broker outage under load, and SIGKILL at random moments."""

from __future__ import annotations

import asyncio
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.runtime import Gateway
from gateway.store import db_path
from gateway.testing import store_sql, stored_history
from tests.conftest import FIELDGATE, Mosquitto, free_port
from tests.eventbus.test_eventbus import mqtt_client, wait_connected
from tests.store.test_store import wait_healthy
from tests.test_runtime import MODEL, virtual_device

OUTAGE_S = float(os.environ.get("FIELDGATE_OUTAGE_SECONDS", "60"))
DEVICES = 20


def load_config(broker_url: str, extra: str = "") -> str:
    devices = "".join(virtual_device(f"d{i}", interval="50ms") for i in range(DEVICES))
    return MODEL.replace("eventbus: {url: none}", f"eventbus: {{url: \"{broker_url}\"}}{extra}") + devices


def outbox_messages_left(db_file: Path) -> tuple[object, ...]:
    return store_sql(db_file, "SELECT count(*) FROM outbox")[0]


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


class Subscriber:
    """A QoS 1 subscriber with a persistent session (the broker keeps its messages while it is away) that
    acknowledges a message only once it has written it (acking_subscriber.py: mosquitto_sub acknowledges before it
    prints, so stopping it could lose a message the gateway did deliver)."""

    def __init__(self, broker: Mosquitto, path: Path) -> None:
        self.broker = broker
        self.path = path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).with_name("acking_subscriber.py")),
                                         str(self.broker.port), "fieldgate/#", "durability-check", str(self.path)],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 15)
        assert ready and self.process.stdout.readline() == b"subscribed\n", "the check subscriber did not subscribe"

    def stop(self) -> None:
        """SIGTERM: it takes no more messages, and disconnects after acknowledging what it wrote."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def counts(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = {}
        for line in self.path.read_bytes().splitlines():
            topic, _, payload = line.partition(b" ")
            try:
                count = json.loads(payload)["values"]["count"]
            except (ValueError, KeyError):
                continue
            result.setdefault(topic.decode().split("/")[3], []).append(count)
        return result


@pytest.mark.soak  # a minute of waiting: scripts/test.sh runs it beside the rest
async def test_broker_outage_loses_nothing(tmp_path: Path, write_config: Callable[[str], Path],
                                           start_gateway: Callable[..., Any]) -> None:
    broker = Mosquitto(tmp_path, persistence=True)
    broker.start()
    subscriber = Subscriber(broker, tmp_path / "received.txt")
    subscriber.start()
    try:
        await asyncio.sleep(0.3)
        gw: Gateway = await start_gateway(write_config(load_config(broker.url)))
        await wait_connected(gw)
        await asyncio.sleep(2)
        subscriber.stop()
        broker.stop()  # the subscriber's session and what is queued for it survive (persistence)
        await asyncio.sleep(OUTAGE_S)
        during = {f"d{i}": gw.api.twin(f"default/d{i}").properties["count"].reported for i in range(DEVICES)}
        depth = gw.store.outboxes.depth.get("eventbus", 0)
        assert depth >= DEVICES * OUTAGE_S * 20 * 0.8  # 20 reports/s per device waited in the outbox
        broker.start()
        subscriber.start()
        back = time.monotonic()

        def caught_up() -> bool:
            counts = subscriber.counts()
            return len(counts) == DEVICES and all(counts[d][-1] >= during[d] for d in during)

        while not caught_up() and time.monotonic() - back < 60:  # noqa: ASYNC110  (polling a file)
            await asyncio.sleep(0.5)
        drained_in = time.monotonic() - back
    finally:
        subscriber.stop()
        broker.stop()
    counts = subscriber.counts()
    assert len(counts) == DEVICES
    for device, seen in counts.items():
        assert seen[0] == 0, f"{device}: the first readings are missing"
        assert seen == list(range(len(seen))), f"{device}: a gap or a repeat"  # in order, none twice
        assert seen[-1] >= during[device], f"{device}: readings from the outage never arrived"
    print(f"\noutage {OUTAGE_S:.0f}s: {depth} messages waited in the outbox; all delivered in order "
          f"{drained_in:.1f}s after the broker came back")


@pytest.mark.slow
async def test_sigkill_under_load_loses_nothing_from_the_outbox(mosquitto: Mosquitto, tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "plant.yaml"
    config.write_text(load_config(mosquitto.url, f"\nhttp: {{listen: \"127.0.0.1:{port}\"}}"))
    data = tmp_path / "data"
    rng = random.Random(11)
    async with mqtt_client(mosquitto, "fieldgate/#") as (_, queue):
        for round_ in range(11):
            with (tmp_path / "gateway.log").open("ab") as log:  # a file: an unread pipe could fill and block it
                proc = subprocess.Popen([*FIELDGATE, "run", "-c", str(config),  # noqa: ASYNC220
                                         "--data-dir", str(data), "--log-level", "warning"], stderr=log)
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
    stored = stored_history(db_path(data), "count")
    (left,) = outbox_messages_left(db_path(data))
    assert len(stored) > 11 * DEVICES * 5
    missing = [row for row in stored if (row[0].split("/")[1], row[1], row[2]) not in received]
    assert not missing, f"{len(missing)} readings entered the outbox but never arrived, e.g. {missing[:3]}"
    assert left == 0
