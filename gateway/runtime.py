"""The composition root: builds the gateway's parts, wires them together and starts and stops them in order.

Nothing here is in the data path. A reading goes poller → twin → bus; the bus hands it to the history (the store)
and to the outboxes of the eventbus, the routes and the plugins' sinks; the store tells the sinks what it
committed. A desired value goes API/eventbus/uplink → `Devices.set_desired` → twin, store, bus → the poller. The
web app and every plugin see the gateway through `gateway.api.GatewayAPI` (`Gateway.api`), never this object.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pluggy

from gateway import __version__
from gateway.api import GatewayAPI
from gateway.errors import ConfigError
from gateway.eventbus.access import BrokerAccess, Credentials, broker_access
from gateway.eventbus.broker import EmbeddedBroker
from gateway.eventbus.link import OUTBOX, EventbusLink, EventbusSink
from gateway.messages import EVENTBUS_STATE, TELEMETRY_FILTER, EventbusStateChange, Report
from gateway.pipeline.bus import Bus
from gateway.pipeline.devices import Devices
from gateway.pipeline.reconfigure import Configuration
from gateway.pipeline.routes import Routes
from gateway.pipeline.supervisor import Supervisor
from gateway.plugins import get_plugin_manager
from gateway.protocols.registry import Protocols, protocol_registry
from gateway.resources.addresses import parse_listen as parse_listen
from gateway.resources.loader import Config, load_path
from gateway.resources.schema import EventbusSettings
from gateway.services.mesh import ServiceMesh
from gateway.sinks.manager import Sinks
from gateway.sinks.registry import endpoint_registry, sink_registry
from gateway.store import Store
from gateway.workloads.secrets import SecretBox
from gateway.workloads.supervisor import WorkloadManager

log = logging.getLogger(__name__)
RETENTION_EVERY = 60.0
SHUTDOWN_DRAIN = 2.0  # seconds working sinks get to deliver their outbox on a clean shutdown
STOP_STEP = 5.0  # seconds the shutdown hooks get to finish on a stop


class Gateway:
    """Owns every running part; use `async with Gateway.from_path(...) as gw:` or start()/stop()."""

    def __init__(self, config: Config, data_dir: Path, pm: pluggy.PluginManager, *,
                 config_path: Path | None = None, protocols: Protocols | None = None) -> None:
        self.data_dir = data_dir
        self.pm = pm
        self.node_name = config.gateway.name
        self.started_at = 0.0
        self.protocols = protocols if protocols is not None else protocol_registry(pm)
        self.endpoint_types = endpoint_registry(pm)
        self.bus = Bus()
        self.store = Store(data_dir, flush_interval=float(config.gateway.store.flush_interval),
                           secrets=SecretBox(data_dir), sync=config.gateway.store.sync)
        self.supervisor = Supervisor()
        self.configuration = Configuration(config, self.protocols, self.store, config_path=config_path,
                                           endpoint_types=self.endpoint_types)
        self.devices = Devices(self.protocols, self.bus, self.supervisor, self.store)
        self.sinks = Sinks(self.store, self.supervisor)
        settings = config.gateway.eventbus
        self.broker = self._embedded_broker(settings) if settings.url == "embedded" else None
        self.eventbus = EventbusLink(self.node_name, settings, self.broker) if settings.url != "none" else None
        self.routes = Routes(self.node_name, self.bus, self.store, self.sinks, sink_registry(pm),
                             eventbus_on=self.eventbus is not None)
        self.api = GatewayAPI(node_name=self.node_name, data_dir=data_dir, pm=pm, configuration=self.configuration,
                              devices=self.devices, bus=self.bus, store=self.store, supervisor=self.supervisor,
                              sinks=self.sinks, routes=self.routes, eventbus=lambda: self.eventbus,
                              status=self.status, started_at=lambda: self.started_at)
        self.workloads = self.api.workloads = WorkloadManager(self.api)
        self.services = self.api.services = ServiceMesh(self.api)
        self.devices.gateway = self.api
        self.routes.attach(self.api)

    @classmethod
    def from_path(cls, path: str | Path, data_dir: str | Path, *,
                  pm: pluggy.PluginManager | None = None) -> Gateway:
        pm = pm or get_plugin_manager()
        protocols = protocol_registry(pm)  # one registry: what the documents imported, the devices use
        config = load_path(path, protocols, endpoint_registry(pm))
        return cls(config, Path(data_dir), pm, config_path=Path(path), protocols=protocols)

    @property
    def config(self) -> Config:
        """The running configuration (see GatewayAPI.config)."""
        return self.configuration.config

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.started_at = time.time()
        await self.store.open()
        try:
            previous = await self.configuration.load_stored()
            self.configuration.log_older_forms(None, self.config)
            self.bus.subscribe(TELEMETRY_FILTER, self._store_report)
            self.bus.subscribe(EVENTBUS_STATE, self._eventbus_state)
            self.supervisor.start("store-writer", self.store.run_writer)
            self.supervisor.start("history-retention", self._retention)
            self._start_eventbus()
            self.routes.start(self.config)
            await self.devices.start(self.config, previous)
            await self.services.start(self.config)  # before the workloads: they get the services' addresses
            await self.workloads.start(self.config)
            for listener in (self._routes_changed, self.devices.reconcile, self._services_changed,
                             self._workloads_changed,
                             self._broker_changed, self._plugins_config_changed):
                self.configuration.add_listener(listener)
            await self._call_hook("startup", gateway=self.api)
        except BaseException:
            await self.stop()
            raise
        log.info("fieldgate %s started: node %s, %d devices, data in %s", __version__, self.node_name,
                 len(self.devices.pollers), self.data_dir)

    async def stop(self) -> None:
        # The pollers first, all at once: under overload they keep the loop busy, and every later step (hooks, the
        # outboxes) then runs on a quiet loop. Every step is bounded, so a stop ends in seconds.
        await self.devices.stop()
        try:
            async with asyncio.timeout(STOP_STEP):
                await self._call_hook("shutdown", gateway=self.api)
        except Exception as exc:  # one plugin's failure must not keep the rest from stopping
            log.warning("shutdown hooks: %s", "did not finish in time" if isinstance(exc, TimeoutError) else exc)
        await self.workloads.stop()
        await self.services.stop()
        with contextlib.suppress(Exception):
            await self.sinks.drain(SHUTDOWN_DRAIN)
        await self.supervisor.stop()
        await self.store.close()
        log.info("fieldgate stopped")

    async def _call_hook(self, name: str, **kwargs: Any) -> None:
        for result in getattr(self.pm.hook, name)(**kwargs):
            if inspect.isawaitable(result):
                await result

    def _embedded_broker(self, settings: EventbusSettings) -> EmbeddedBroker:
        host, port = parse_listen(settings.embedded_listen, "eventbus.embedded_listen")
        anonymous = settings.allow_anonymous if settings.allow_anonymous is not None else not settings.users
        if anonymous and host not in ("127.0.0.1", "::1", "localhost"):
            log.warning("the embedded broker listens on %s with anonymous access: any host that reaches it may "
                        "publish and subscribe (list eventbus.users, or set allow_anonymous: false)", host)
        return EmbeddedBroker(self.data_dir, host, port, self._broker_access, Credentials.generate())

    def _broker_access(self) -> BrokerAccess:
        """Who may do what on the embedded broker now: the gateway itself, the users and rules of the settings."""
        assert self.broker is not None
        gateway = self.config.gateway
        return broker_access(gateway.eventbus, gateway.namespace, self.config.secrets, self.broker.credentials,
                             self.routes.eventbus_topics())

    async def _broker_changed(self, old: Config, new: Config) -> None:
        if self.broker is not None and new.gateway.eventbus.url == "embedded":
            try:
                await self.broker.reconfigure()
            except ConfigError as exc:
                log.error("embedded broker: its users and rules were not changed: %s", exc)

    def _start_eventbus(self) -> None:
        link = self.eventbus
        if link is None:
            return
        settings = link.settings
        if self.broker is not None:
            self.supervisor.start("embedded-broker", self.broker.run)
        link.attach(self.api)
        self.supervisor.start("eventbus", link.run)
        self.sinks.start(OUTBOX, EventbusSink(link, settings.telemetry_qos))

    def _eventbus_state(self, topic: str, change: EventbusStateChange) -> None:
        if change.connected:
            self.sinks.notify_all()  # deliver what waited, now

    async def _routes_changed(self, old: Config, new: Config) -> None:
        if await self.routes.reconcile(old, new) and self.eventbus is not None:
            await self.eventbus.resubscribe()

    async def _services_changed(self, old: Config, new: Config) -> None:
        await self.services.reconcile(new)

    async def _workloads_changed(self, old: Config, new: Config) -> None:
        await self.workloads.reconcile(new)

    async def _plugins_config_changed(self, old: Config, new: Config) -> None:
        await self._call_hook("config_changed", gateway=self.api, old=old, new=new)

    async def _retention(self) -> None:
        settings = self.config.gateway.store
        eventbus = self.config.gateway.eventbus
        while True:
            await self.store.history.prune(float(settings.history_max_age), settings.history_max_bytes)
            await self.sinks.trim(eventbus.outbox_max_messages, float(eventbus.outbox_max_age))
            await asyncio.sleep(RETENTION_EVERY)

    def _store_report(self, topic: str, report: Report) -> None:
        self.store.history.add_report(report.device, report.ts, report.values)

    # --- status -------------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "node": self.node_name,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            **self.devices.describe(),
            "store": {"values_written": self.store.history.values_written, "queued": self.store.history.queued,
                      "history_dropped": self.store.history.dropped, **self.store.health.describe()},
            "eventbus": self.eventbus.describe() if self.eventbus else {"url": "none", "connected": False},
            "sinks": self.sinks.describe(),
            "routes": self.routes.describe(),
            "workloads": self.workloads.status(),
            "services": self.services.status(),
            "tasks": {name: {"state": s.state, "restarts": s.restarts, "last_error": s.last_error}
                      for name, s in self.supervisor.status.items() if not name.startswith("device ")},
        }

