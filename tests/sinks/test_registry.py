"""Sink types are plugins: the built-in ones registered like a plugin's, and a sink type a plugin (defined here)
registers, which a Route delivers to through the core's outbox, retries and counters."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import msgspec
import pluggy
import pytest
from msgspec import Meta

from gateway.errors import PluginError, ResourceError
from gateway.hookspecs import hookimpl
from gateway.plugins import get_plugin_manager, list_plugins
from gateway.resources.endpoints import BUILTIN_ENDPOINT_TYPES, EndpointType
from gateway.resources.loader import check_documents, parse_yaml
from gateway.runtime import Gateway
from gateway.sinks.base import OutboxMessage, Sink, SinkContext, SinkError
from gateway.sinks.registry import endpoint_registry, sink_registry
from tests.resources.test_loader import PROTOCOLS
from tests.test_runtime import wait_for


class LedgerProperties(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where a ledger keeps what it is sent."""

    book: Annotated[str, Meta(min_length=1)]
    page_size: Annotated[int, Meta(ge=1, le=1000)] = 10


class LedgerSink(Sink):
    """A target that keeps what it acknowledged, and that the test can make fail or hold a batch."""

    name: ClassVar[str] = "ledger"
    properties_type = LedgerProperties
    target_resource = "topic"
    older_form = True
    running: ClassVar[dict[str, LedgerSink]] = {}

    def __init__(self, book: str, route: str) -> None:
        self.book = book
        self.received: list[tuple[str, bytes]] = []
        self.failing = False
        self.release = asyncio.Event()
        self.release.set()
        self.holding = asyncio.Event()
        LedgerSink.running[route] = self

    @classmethod
    def for_route(cls, properties: LedgerProperties, target_resource: Mapping[str, str],
                  context: SinkContext) -> LedgerSink:
        assert context.api.node_name == context.node_name
        return cls(properties.book, f"{context.namespace}/{context.route_name}")

    async def send(self, batch: list[OutboxMessage]) -> None:
        if self.failing:
            raise SinkError(f"ledger {self.book} is closed")
        self.holding.set()
        await self.release.wait()
        self.received += [(message.topic, message.payload) for message in batch]


class LedgerPlugin:
    @hookimpl
    def register_sinks(self) -> Iterable[type[Sink]]:
        return [LedgerSink]

    @hookimpl
    def register_endpoint_types(self) -> Iterable[EndpointType]:
        return [EndpointType("display", LedgerProperties, provider=__name__)]


@pytest.fixture
def plugin_manager(plugin_manager: pluggy.PluginManager) -> pluggy.PluginManager:
    plugin_manager.register(LedgerPlugin(), name="tests.ledger")
    return plugin_manager


CONFIG = """\
kind: Gateway
name: test-gw
eventbus: {url: none}
store: {flush_interval: 50ms}
---
kind: Endpoint
name: bus
type: bus
---
kind: Endpoint
name: books
type: ledger
properties: {book: cash, page_size: "5"}
---
kind: Route
name: to-books
source: bus
source_resource: {topic: "orders/#"}
target: books
target_resource: {topic: "ledger/{topic}"}
"""


def test_builtin_sinks_are_registered_like_plugins() -> None:
    pm = get_plugin_manager(load_entry_points=False)
    assert sorted(sink_registry(pm)) == ["eventbus", "http", "mqtt", "rest", "servicebus"]
    assert endpoint_registry(pm) == BUILTIN_ENDPOINT_TYPES  # what the loader checks against by default
    infos = {info.name: info for info in list_plugins(pm, serves=True)}
    assert infos["gateway.sinks.builtin"].hooks == ("register_sinks",)
    assert infos["gateway.sinks.builtin"].serves == {"register_sinks": ("eventbus", "http", "mqtt", "rest",
                                                                        "servicebus")}


def test_a_plugin_sink_type_is_registered_and_checked(plugin_manager: pluggy.PluginManager) -> None:
    types = endpoint_registry(plugin_manager)
    assert types["ledger"].target_resource == "topic" and types["ledger"].source_resource is None
    assert types["display"].is_target is False
    config = check_documents(parse_yaml(CONFIG, "books.yaml"), PROTOCOLS, types)
    assert config.endpoint_types[("default", "books")] == "ledger"
    assert config.endpoint_properties[("default", "books")] == LedgerProperties(book="cash", page_size=5)
    bad = CONFIG.replace('page_size: "5"', "page_size: 0") + (
        "---\nkind: Endpoint\nname: screen\ntype: display\nproperties: {book: x}\n"
        "---\nkind: Route\nname: to-screen\nsource: bus\nsource_resource: {topic: a}\ntarget: screen\n")
    with pytest.raises(ResourceError) as info:
        check_documents(parse_yaml(bad, "books.yaml"), PROTOCOLS, types)
    endpoint, route = info.value.problems
    assert endpoint == "books.yaml: document 3 (Endpoint books): $.properties.page_size: Expected int >= 1, got 0"
    assert route.startswith("books.yaml: document 6 (Route to-screen): $.target: a display endpoint cannot be a "
                            "route target (it can be: eventbus, http, ") and "ledger" in route
    with pytest.raises(ResourceError) as info:  # without the plugin, the type is unknown
        check_documents(parse_yaml(CONFIG, "books.yaml"), PROTOCOLS)
    assert info.value.problems[0] == ("books.yaml: document 3 (Endpoint books): $.type: unknown endpoint type "
                                      "'ledger' (known: bus, eventbus, http, mqtt, rest, servicebus)")


def test_two_plugins_serving_one_type_is_an_error(plugin_manager: pluggy.PluginManager) -> None:
    class Again:
        @hookimpl
        def register_sinks(self) -> Iterable[type[Sink]]:
            return [type("OtherLedger", (LedgerSink,), {})]

    plugin_manager.register(Again(), name="tests.again")
    with pytest.raises(PluginError, match="endpoint type 'ledger' is served by both"):
        sink_registry(plugin_manager)


async def test_a_route_delivers_to_a_plugin_sink_through_the_core_outbox(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any]) -> None:
    gw: Gateway = await start_gateway(write_config(CONFIG))
    outbox = "route:default/to-books"
    sink = LedgerSink.running["default/to-books"]
    runner = gw.sinks.runners[outbox]
    assert runner.sink is sink
    sink.failing = True
    for n in range(5):
        gw.api.publish(f"orders/{n}", f"order {n}".encode())
    # the target refuses: the messages wait in the outbox, the failures are counted
    await wait_for(lambda: runner.stats.failures >= 2 and gw.store.outboxes.depth.get(outbox) == 5, timeout=10)
    assert sink.received == [] and gw.routes.describe()[0]["state"] == "failing"
    # the target takes a batch but has not acknowledged it yet: the messages are still in the outbox
    sink.release.clear()
    sink.failing = False
    runner.notify()
    await wait_for(sink.holding.is_set, timeout=10)
    await asyncio.sleep(0.2)  # a flush interval and more: nothing may be taken out before the acknowledgement
    assert gw.store.outboxes.depth.get(outbox) == 5 and sink.received == []
    sink.release.set()
    await wait_for(lambda: gw.store.outboxes.depth.get(outbox) == 0, timeout=10)
    assert sink.received == [(f"ledger/orders/{n}", f"order {n}".encode()) for n in range(5)]  # in order, once
    gw.api.publish("orders/5", b"order 5")
    await wait_for(lambda: len(sink.received) == 6, timeout=10)
    # counted once the send returned and the outbox let the batch go: just after the sink got it
    await wait_for(lambda: gw.routes.describe()[0]["successes"] == 6, timeout=10)
    route = gw.routes.describe()[0]
    assert (route["name"], route["target"], route["accepted"], route["successes"]) == ("to-books", "ledger:books", 6,
                                                                                        6)
    assert route["failures"] == runner.stats.failures >= 2 and route["state"] in ("delivering", "idle")
    assert gw.status()["sinks"][outbox]["sink"] == "ledger"


OLDER = """\
kind: Gateway
name: test-gw
eventbus: {url: none}
store: {flush_interval: 50ms}
---
kind: Endpoint
name: books
type: http
properties: {plugin: ledger, book: cash, topic: "orders/#"}
"""


async def test_an_older_form_endpoint_implies_a_route_and_is_logged_once(
        write_config: Callable[[str], Path], start_gateway: Callable[..., Any], caplog: pytest.LogCaptureFixture
        ) -> None:
    caplog.set_level(logging.INFO)
    gw: Gateway = await start_gateway(write_config(OLDER))
    note = ("Endpoint default/books has the older form (`type: http` with `properties.plugin: ledger`): read as "
            "`type: ledger` with a Route from the bus topic 'orders/#' (outbox ledger:default/books)")
    assert gw.config.endpoint_types[("default", "books")] == "ledger"
    sink = LedgerSink.running["default/books"]
    gw.api.publish("orders/1", b"one")
    await wait_for(lambda: sink.received == [("orders/1", b"one")], timeout=10)
    await gw.configuration.apply_documents("kind: Endpoint\nname: bus\ntype: bus\n", actor="test")
    await wait_for(lambda: gw.store.outboxes.depth.get("ledger:default/books") == 0, timeout=10)
    assert [r.getMessage() for r in caplog.records].count(f"{gw.configuration.config_path}: document 2 "
                                                          f"(Endpoint books): {note}") == 1
    assert gw.routes.describe()[0]["source"] == "bus:orders/#" and gw.routes.describe()[0]["target"] == "ledger:books"
