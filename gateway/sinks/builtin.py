"""The built-in sink types, registered through `register_sinks` exactly like a plugin's: `mqtt`, `http`,
`servicebus`, `rest` and `eventbus` as route targets."""

from __future__ import annotations

from collections.abc import Iterable

from gateway.hookspecs import hookimpl
from gateway.sinks.base import Sink


@hookimpl
def register_sinks() -> Iterable[type[Sink]]:
    from gateway.sinks.eventbus import EventbusTargetSink
    from gateway.sinks.http import HttpSink, RestSink, ServicebusSink
    from gateway.sinks.mqtt import MqttSink

    return [MqttSink, HttpSink, ServicebusSink, RestSink, EventbusTargetSink]
