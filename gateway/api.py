"""The narrow gateway API: what hooks, plugins, the web app, the eventbus and the uplink may use of a running
gateway. The runtime builds one `GatewayAPI` and hands it to every hook (`startup(gateway)`, `shutdown(gateway)`,
`config_changed(gateway, old, new)`) and part; nothing outside the composition root holds the runtime itself.

Plugins use the methods in the first sections (identity, configuration, devices and twins, the bus, outboxes and
sinks, supervised tasks, the eventbus, status). The last section names the gateway's own parts that the web app
and the uplink drive (resources, workloads, routes, store); plugins leave them alone, and
tests/test_architecture.py keeps plugins from importing what lies behind them.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pluggy

    from gateway.eventbus.link import EventbusLink
    from gateway.pipeline.bus import Bus, Handler
    from gateway.pipeline.devices import Devices
    from gateway.pipeline.poller import PollStats
    from gateway.pipeline.reconfigure import ConfigListener, Configuration
    from gateway.pipeline.routes import Routes
    from gateway.pipeline.supervisor import Supervisor, TaskStatus
    from gateway.pipeline.twin import Twin, TwinProperty
    from gateway.plugins import PluginInfo
    from gateway.protocols.base import BoundDevice, Protocol
    from gateway.resources.loader import Config
    from gateway.resources.schema import Device
    from gateway.services.mesh import ServiceMesh
    from gateway.sinks.base import Sink
    from gateway.sinks.manager import Sinks
    from gateway.store import Store
    from gateway.workloads.supervisor import WorkloadManager

from gateway.resources.loader import LOCAL as LOCAL  # who owns a document: the UI and the REST API …
from gateway.resources.loader import REGISTRY as REGISTRY  # … or the registry (both kept in the store)


@dataclass(frozen=True)
class EventbusLogin:
    """How a plugin opens a session of its own with the eventbus broker: its address, TLS files and the login.

    At the embedded broker the login is the gateway's own user, whom its users and rules allow everything (a name
    apps cannot take, a password made at every start); at an external broker it is the eventbus settings' user.
    """

    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None = field(repr=False, default=None)
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class GatewayAPI:
    """One running gateway, as its parts and plugins see it."""

    def __init__(self, *, node_name: str, data_dir: Path, pm: pluggy.PluginManager, configuration: Configuration,
                 devices: Devices, bus: Bus, store: Store, supervisor: Supervisor, sinks: Sinks, routes: Routes,
                 eventbus: Callable[[], EventbusLink | None],
                 status: Callable[[], dict[str, Any]], started_at: Callable[[], float]) -> None:
        self.node_name = node_name
        self.data_dir = data_dir
        self.pm = pm
        self._configuration = configuration
        self._devices = devices
        self._bus = bus
        self._supervisor = supervisor
        self._sinks = sinks
        self._eventbus = eventbus
        self._status = status
        self._status_parts: dict[str, Callable[[], dict[str, Any]]] = {}
        self._started_at = started_at
        # the gateway's own parts, for the web app and the uplink (see the module docstring)
        self.resources = configuration
        self.workloads: WorkloadManager  # set by the runtime, which builds the workloads with this API
        self.services: ServiceMesh  # set by the runtime too: the node's services, their DNS and proxies
        self.routes = routes
        self.store = store

    # --- identity -------------------------------------------------------------------------------------------------

    @property
    def protocols(self) -> Mapping[str, type[Protocol]]:
        """The protocol classes by protocol name: registered by the `register_protocols` hook, or declared as
        `fieldgate.protocols` entry points and imported on first use (iterating every class imports them all)."""
        return self._configuration.protocols

    @property
    def started_at(self) -> float:
        """When the gateway started (unix time)."""
        return self._started_at()

    # --- configuration --------------------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        """The running configuration: a snapshot replaced whole on every change; read it, never edit it."""
        return self._configuration.config

    def on_config_changed(self, listener: ConfigListener) -> None:
        """Call `await listener(old, new)` after every configuration change (plugins may also implement the
        `config_changed` hook)."""
        self._configuration.add_listener(listener)

    # --- devices and twins ----------------------------------------------------------------------------------------

    def devices(self) -> Mapping[str, BoundDevice]:
        """The devices of the running configuration by id (`<namespace>/<name>`), bound to model and protocol."""
        return self._devices.bound

    def device(self, device_id: str) -> Device:
        """A device's document; raises NotFound."""
        return self._devices.device(device_id)

    def twin(self, device_id: str) -> Twin:
        """A device's twin (desired, reported, quality per property; state); raises NotFound."""
        return self._devices.twin(device_id)

    def twins(self) -> Mapping[str, Twin]:
        """Every device's twin by id."""
        return self._devices.twins

    def poll_stats(self, device_id: str) -> PollStats | None:
        """A device's poll counters and recent cycle lateness, None when it has no poller."""
        poller = self._devices.pollers.get(device_id)
        return poller.stats if poller is not None else None

    def points_read(self) -> float:
        """Values read from devices since the gateway started, over every poller."""
        return self._devices.points_read()

    async def set_desired(self, device_id: str, prop: str, value: Any, *, actor: str = "system",
                          address: str = "") -> TwinProperty:
        """Check (type, access, minimum/maximum) and store a desired value, audited as `actor`; the device's poller
        writes it and confirms it by reading back. Raises NotFound or ValueRejected."""
        return await self._devices.set_desired(device_id, prop, value, actor=actor, address=address)

    def check_desired(self, device_id: str, values: Mapping[str, Any]) -> None:
        """Raise as set_desired would for the first of several values that cannot be set; set nothing."""
        self._devices.check_desired(device_id, values)

    # --- the bus --------------------------------------------------------------------------------------------------

    def subscribe(self, topic_filter: str, handler: Handler) -> int:
        """Call `handler(topic, message)` for every bus message matching the MQTT-style filter (gateway.messages
        lists the topics); the handler must not block. Returns the subscription id."""
        return self._bus.subscribe(topic_filter, handler)

    def unsubscribe(self, sub_id: int) -> None:
        self._bus.unsubscribe(sub_id)

    def publish(self, topic: str, message: Any) -> int:
        """Hand a message to every matching subscriber now; returns how many took it."""
        return self._bus.publish(topic, message)

    # --- outboxes and sinks -----------------------------------------------------------------------------------------

    def add_outbox(self, outbox: str, topic: str, payload: bytes) -> None:
        """Queue a message for an outbox; it is durable once the store's next flush commits it, then the outbox's
        sink delivers it."""
        self._store_add_outbox(outbox, topic, payload)

    def start_sink(self, outbox: str, sink: Sink, *, log_fields: dict[str, str] | None = None) -> None:
        """Deliver an outbox into a sink: the core runs it (retries, backoff, order, counters, status)."""
        self._sinks.start(outbox, sink, log_fields=log_fields)

    async def stop_sink(self, outbox: str) -> None:
        """Stop delivering an outbox; its messages stay in the store."""
        await self._sinks.stop(outbox)

    async def flush(self) -> None:
        """Commit what is queued (reports, outbox messages) now instead of at the next flush."""
        await self.store.flush()

    def sinks(self) -> dict[str, dict[str, Any]]:
        """Every running sink's state and counters by outbox."""
        return self._sinks.describe()

    # --- supervised tasks -------------------------------------------------------------------------------------------

    def start_task(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `await factory()` in a task restarted with backoff when it fails, logged once per state change,
        shown in status; stopped when the gateway stops."""
        self._supervisor.start(name, factory)

    async def cancel_task(self, name: str) -> None:
        await self._supervisor.cancel(name)

    def tasks(self) -> Mapping[str, TaskStatus]:
        """The supervised tasks' states by name."""
        return self._supervisor.status

    # --- the eventbus ---------------------------------------------------------------------------------------------

    def eventbus_connected(self) -> bool:
        """True while the gateway's session with the local MQTT broker is up (changes are published on the bus
        as `gateway/eventbus/state`)."""
        link = self._eventbus()
        return link is not None and link.client is not None

    async def eventbus_publish(self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = False) -> bool:
        """Publish on the local broker now through the gateway's own session; False when it is not connected or
        the publish failed (durable traffic goes through an outbox instead)."""
        link = self._eventbus()
        return link is not None and await link.publish(topic, payload, qos=qos, retain=retain)

    def eventbus_login(self) -> EventbusLogin | None:
        """Where and as whom a plugin connects its own MQTT session to the eventbus broker; None when it is off."""
        link = self._eventbus()
        if link is None:
            return None
        username, password = link.login()
        settings = link.settings
        return EventbusLogin(link.host, link.port, link.tls, username, password, settings.ca_file,
                             settings.cert_file, settings.key_file)

    def eventbus_status(self) -> dict[str, Any] | None:
        """The eventbus link's state and counters, None when the eventbus is off."""
        link = self._eventbus()
        return link.describe() if link is not None else None

    # --- status and plugins ---------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The gateway's status as GET /api/v1/status gives it."""
        return {**self._status(), **{name: provider() for name, provider in self._status_parts.items()}}

    def add_status(self, name: str, provider: Callable[[], dict[str, Any]]) -> None:
        """Add a part to the gateway's status under `name` (the uplink's: how the node talks to the registry)."""
        self._status_parts[name] = provider

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin with the distribution it came from."""
        from gateway.plugins import list_plugins

        return list_plugins(self.pm)

    # --- internals ------------------------------------------------------------------------------------------------

    def _store_add_outbox(self, outbox: str, topic: str, payload: bytes) -> None:
        self.store.outboxes.add(outbox, topic, payload)
