"""The fieldgate plugin: device telemetry to InfluxDB through a durable outbox per configured Endpoint.

Routes build only the sink types the core knows, so this plugin runs its own delivery, configured by Endpoint
documents that name it:

    kind: Endpoint
    name: influx
    type: http
    properties: {plugin: influxdb, url: "http://127.0.0.1:8086", org: plant, bucket: telemetry, token: "…"}

Optional properties: `database` instead of bucket/org/token (InfluxDB 1.x), `measurement` (default `telemetry`),
`topic` (a bus topic filter, default `devices/+/+/telemetry`), `timeout` (seconds, default 10). Each such endpoint
gets the outbox and sink `influxdb:<namespace>/<name>`, seen by status and metrics like every other sink.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fieldgate_influxdb.lineprotocol import line
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.resources.schema import Endpoint
from gateway.runtime import Gateway, Report
from gateway.sinks.base import SinkRunner

log = logging.getLogger(__name__)
PLUGIN = "influxdb"
DEFAULT_TOPIC = "devices/+/+/telemetry"
WATCH_EVERY = 1.0  # seconds between looks for changed Endpoint documents

_writers: weakref.WeakKeyDictionary[Gateway, InfluxWriters] = weakref.WeakKeyDictionary()


def influx_endpoints(gateway: Gateway) -> dict[str, Endpoint]:
    """The Endpoint documents that configure this plugin, by outbox name."""
    return {f"{PLUGIN}:{ns}/{name}": endpoint for (ns, name), endpoint in sorted(gateway.config.endpoints.items())
            if endpoint.properties.get("plugin") == PLUGIN}


def report_line(report: Report, *, measurement: str, node: str) -> bytes | None:
    """A device report as one line of line protocol with `device` and `node` tags and a nanosecond timestamp."""
    text = line(measurement, {"device": report.device, "node": node}, report.values, round(report.ts * 1e9))
    return text.encode() if text is not None else None


class InfluxWriters:
    """The running writers of one gateway: a bus subscription and a SinkRunner per configured endpoint."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.running: dict[str, tuple[Endpoint, int]] = {}
        self._config: Any = None

    async def sync(self) -> None:
        """Start, restart or stop writers so they match the Endpoint documents of the running configuration."""
        self._config = self.gateway.config
        wanted = influx_endpoints(self.gateway)
        for outbox, (endpoint, sub_id) in list(self.running.items()):
            if wanted.get(outbox) != endpoint:
                self.gateway.bus.unsubscribe(sub_id)
                await self.gateway.supervisor.cancel(f"sink {outbox}")
                self.gateway.sinks.pop(outbox, None)
                del self.running[outbox]
        for outbox, endpoint in wanted.items():
            if outbox not in self.running:
                self._start(outbox, endpoint)

    def _start(self, outbox: str, endpoint: Endpoint) -> None:
        try:
            from fieldgate_influxdb.sink import InfluxSink  # httpx is loaded only when an endpoint asks

            sink = InfluxSink.from_properties(endpoint.properties)
        except (ConfigError, KeyError, ValueError) as exc:
            log.error("Endpoint %s/%s (plugin: influxdb): %s; not writing to it", endpoint.namespace, endpoint.name,
                      exc)
            return
        runner = self.gateway.sinks[outbox] = SinkRunner(outbox, sink, self.gateway.store)
        self.gateway.supervisor.start(f"sink {outbox}", runner.run)
        sub_id = self.gateway.bus.subscribe(endpoint.properties.get("topic", DEFAULT_TOPIC),
                                            self._handler(outbox, endpoint.properties.get("measurement",
                                                                                          "telemetry")))
        self.running[outbox] = (endpoint, sub_id)
        log.info("writing telemetry to InfluxDB at %s (outbox %s)", sink.write_url, outbox)

    def _handler(self, outbox: str, measurement: str) -> Callable[[str, Any], None]:
        def handler(topic: str, message: Any) -> None:
            if isinstance(message, Report):
                payload = report_line(message, measurement=measurement, node=self.gateway.node_name)
                if payload is not None:
                    self.gateway.store.outboxes.add(outbox, topic, payload)

        return handler

    async def watch(self) -> None:
        """Follow configuration changes (the REST API, the registry, reloaded files)."""
        while True:
            await asyncio.sleep(WATCH_EVERY)
            if self.gateway.config is not self._config:
                await self.sync()

    def stop_accepting(self) -> None:
        """Stop taking new reports; the runners keep draining until the gateway stops its tasks."""
        for _, sub_id in self.running.values():
            self.gateway.bus.unsubscribe(sub_id)


@hookimpl
def register_sinks() -> Iterable[type[Any]]:
    from fieldgate_influxdb.sink import InfluxSink

    return [InfluxSink]


@hookimpl
def startup(gateway: Gateway) -> Awaitable[None]:
    writers = _writers[gateway] = InfluxWriters(gateway)

    async def start() -> None:
        await writers.sync()
        gateway.supervisor.start(f"{PLUGIN} config watch", writers.watch)

    return start()


@hookimpl
def shutdown(gateway: Gateway) -> None:
    writers = _writers.pop(gateway, None)
    if writers is not None:
        writers.stop_accepting()
