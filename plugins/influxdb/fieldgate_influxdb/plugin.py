"""The fieldgate plugin: the `influxdb` endpoint type, a sink that routes deliver device reports to.

    kind: Endpoint
    name: influx
    type: influxdb
    properties: {url: "http://127.0.0.1:8086", org: plant, bucket: telemetry, token: "…"}
    ---
    kind: Route
    name: telemetry-to-influx
    source: bus
    source_resource: {topic: "devices/+/+/telemetry"}
    target: influx

Optional properties: `database` instead of bucket/org/token (InfluxDB 1.x), `measurement` (default `telemetry`),
`timeout` (seconds, default 10). The core owns the route's outbox, retries and counters like every sink's.

The older form, an Endpoint `type: http` with `properties.plugin: influxdb` and no Route, is read as an `influxdb`
endpoint with an implied route from the bus topic in its `topic` property (default `devices/+/+/telemetry`) and
keeps its outbox `influxdb:<namespace>/<name>`.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.hookspecs import hookimpl
from gateway.sinks.base import Sink


@hookimpl
def register_sinks() -> Iterable[type[Sink]]:
    from fieldgate_influxdb.sink import InfluxSink

    return [InfluxSink]
