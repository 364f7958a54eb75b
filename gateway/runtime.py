"""The gateway runtime: one asyncio loop running the store, the bus, the device pollers and the web app."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import socket
import statistics
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import pluggy

from gateway import __version__
from gateway.bus import Bus, state_topic, telemetry_topic, twin_topic
from gateway.errors import ConfigError, NotFound, ResourceError, ValueRejected
from gateway.eventbus.broker import EmbeddedBroker
from gateway.eventbus.link import OUTBOX, EventbusLink, EventbusSink, make_handlers
from gateway.plugins import get_plugin_manager
from gateway.poller import DevicePoller
from gateway.protocols.base import BoundDevice
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import Config, Source, check_documents, load_path, parse_yaml
from gateway.resources.schema import Device, Document, enc_hook
from gateway.routes import Routes
from gateway.sinks.base import Sink, SinkRunner
from gateway.store import Store
from gateway.supervisor import Supervisor
from gateway.twin import DeviceState, Twin, TwinProperty
from gateway.values import coerce

log = logging.getLogger(__name__)
RETENTION_EVERY = 60.0
SHUTDOWN_DRAIN = 2.0  # seconds working sinks get to deliver their outbox on a clean shutdown
LOCAL = "local"  # resources created through the UI or the API, kept in the store
REGISTRY = "registry"  # resources synced from the registry


class Report(msgspec.Struct, frozen=True):
    """One device report on the bus: the values of the properties whose report was due."""

    device: str
    ts: float
    values: dict[str, Any]


class TwinChange(msgspec.Struct, frozen=True):
    """A desired value changed (on the bus as devices/<ns>/<name>/twin)."""

    device: str
    property: str
    desired: Any
    previous: Any
    previous_at: float | None


class DeviceStateChange(msgspec.Struct, frozen=True):
    device: str
    state: str
    reason: str
    ts: float


class Gateway:
    """Owns every running part; use `async with Gateway.from_path(...) as gw:` or start()/stop()."""

    def __init__(self, config: Config, data_dir: Path, pm: pluggy.PluginManager, *,
                 config_path: Path | None = None, serve_http: bool = False) -> None:
        self.config = config
        self.data_dir = data_dir
        self.pm = pm
        self.config_path = config_path
        self.serve_http = serve_http
        self.node_name = config.gateway.name
        self.protocols = protocol_registry(pm)
        self.bus = Bus()
        self.store = Store(data_dir, flush_interval=float(config.gateway.store.flush_interval))
        self.supervisor = Supervisor()
        self.twins: dict[str, Twin] = {}
        self.pollers: dict[str, DevicePoller] = {}
        self.started_at = 0.0
        self.http_server: Any = None
        self._config_lock = asyncio.Lock()
        self.eventbus: EventbusLink | None = None
        self.sinks: dict[str, SinkRunner] = {}
        self.routes = Routes(self)
        self._http_task: asyncio.Task[None] | None = None

    @classmethod
    def from_path(cls, path: str | Path, data_dir: str | Path, *, serve_http: bool = False,
                  pm: pluggy.PluginManager | None = None) -> Gateway:
        pm = pm or get_plugin_manager()
        config = load_path(path, protocol_registry(pm))
        return cls(config, Path(data_dir), pm, config_path=Path(path), serve_http=serve_http)

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
            previous = await self._previous_desired()
            await self._merge_local_resources()
            await self._save_file_resources()
            stored = await self.store.load_twins()
            for device_id, device in self.config.devices.items():
                self.twins[device_id] = make_twin(device, stored.get(device_id, {}), previous)
            self.bus.subscribe("devices/+/+/telemetry", self._store_report)
            self.supervisor.start("store-writer", self.store.run_writer)
            self.supervisor.start("history-retention", self._retention)
            self.store.on_flush.append(self._notify_sinks)
            self._start_eventbus()
            self.routes.start()
            for device_id in self.config.devices:
                self._start_device(device_id)
            if self.serve_http:
                await self._start_http()
            await self._call_hook("startup")
        except BaseException:
            await self.stop()
            raise
        log.info("fieldgate %s started: node %s, %d devices, data in %s", __version__, self.node_name,
                 len(self.pollers), self.data_dir)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._call_hook("shutdown")
        if self.http_server is not None:
            self.http_server.should_exit = True
            if self._http_task is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self._http_task, 5)
            self.http_server = None
        for device_id in list(self.pollers):
            await self._stop_device(device_id)
        with contextlib.suppress(Exception):
            await self._drain_outboxes(SHUTDOWN_DRAIN)
        await self.supervisor.stop()
        await self.store.close()
        log.info("fieldgate stopped")

    async def _drain_outboxes(self, timeout: float) -> None:
        """Commit what is queued and give working sinks a moment to deliver it (what is left stays durable)."""
        await self.store.flush()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(  # noqa: ASYNC110  (polling several sinks, bounded)
                self.store.outbox_depth.get(name) and runner.stats.state != "failing"
                for name, runner in self.sinks.items()):
            await asyncio.sleep(0.05)

    async def _call_hook(self, name: str) -> None:
        for result in getattr(self.pm.hook, name)(gateway=self):
            if inspect.isawaitable(result):
                await result

    async def _start_http(self) -> None:
        import uvicorn

        from gateway.web.app import create_app

        listen = self.config.gateway.http.listen
        host, port = parse_listen(listen)
        try:  # bind here, so a taken port is a clear error instead of uvicorn exiting the process
            sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                        reuse_port=False)
        except OSError as exc:
            raise ConfigError(f"http.listen {listen}: cannot listen there: {exc.strerror or exc}") from None
        server = _QuietServer(uvicorn.Config(create_app(self), log_level="warning", access_log=False,
                                             lifespan="off"))
        self.http_server = server
        self._http_task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
        for _ in range(500):
            if server.started or self._http_task.done():
                break
            await asyncio.sleep(0.01)
        if not server.started:
            sock.close()
            raise ConfigError(f"http.listen {listen}: the web server did not start")

    async def _previous_desired(self) -> dict[tuple[str, str], Any]:
        """Desired values the documents had at the last start, to tell whether a file's value changed since."""
        previous: dict[tuple[str, str], Any] = {}
        for ns, name, text in await self.store.rows(
            "SELECT namespace, name, document FROM resources WHERE kind='Device'"
        ):
            with contextlib.suppress(msgspec.DecodeError, AttributeError):
                for prop in msgspec.json.decode(text).get("properties", []):
                    if prop.get("desired") is not None:
                        previous[(f"{ns}/{name}", prop["name"])] = prop["desired"]
        return previous

    async def _save_file_resources(self) -> None:
        documents = [(d.kind, d.namespace, d.name, msgspec.json.encode(d, enc_hook=enc_hook))
                     for d in self.config.documents if self.resource_owner(*d.key) == "file"]
        await self.store.save_resources(documents, source="file")

    async def _merge_local_resources(self) -> None:
        """Add the resources created through the UI or API (kept in the store) to those of the files."""
        rows = await self.store.rows("SELECT kind, name, document FROM resources WHERE source='local'")
        if not rows:
            return
        raw = list(self.config.raw.values())
        raw += [(Source(LOCAL, i, f"{kind} {name}"), msgspec.json.decode(doc)) for i, (kind, name, doc) in
                enumerate(rows, start=1)]
        try:
            self.config = check_documents(raw, self.protocols)
        except ResourceError as exc:
            log.error("locally created resources no longer fit the configuration files; running without them: %s",
                      "; ".join(exc.problems))

    def _start_eventbus(self) -> None:
        settings = self.config.gateway.eventbus
        if settings.url == "none":
            return
        if settings.url == "embedded":
            host, port = parse_listen(settings.embedded_listen)
            self.supervisor.start("embedded-broker", EmbeddedBroker(self.data_dir, host, port).run)
        link = self.eventbus = EventbusLink(self, settings)
        for topic_filter, handler in make_handlers(link):
            self.bus.subscribe(topic_filter, handler)
        self.supervisor.start("eventbus", link.run)
        self._start_sink(OUTBOX, EventbusSink(link, settings.telemetry_qos))

    def _start_sink(self, outbox: str, sink: Sink) -> None:
        runner = self.sinks[outbox] = SinkRunner(outbox, sink, self.store)
        self.supervisor.start(f"sink {outbox}", runner.run)

    def notify_sinks(self) -> None:
        """A link came back: every sink retries now instead of at the end of its backoff."""
        for runner in self.sinks.values():
            runner.notify()

    def _notify_sinks(self, outboxes: set[str]) -> None:
        for outbox in outboxes:
            runner = self.sinks.get(outbox)
            if runner is not None:
                runner.notify()

    def _start_device(self, device_id: str) -> None:
        device = self.config.devices[device_id]
        poller = DevicePoller(device, self.protocols[device.resource.protocol.name], self.twins[device_id],
                              on_report=self._on_report, on_state=self._on_state)
        self.pollers[device_id] = poller
        self.supervisor.start(f"device {device_id}", poller.run)

    async def _stop_device(self, device_id: str) -> None:
        await self.supervisor.cancel(f"device {device_id}")
        self.pollers.pop(device_id, None)

    # --- changing resources while running -------------------------------------------------------------------------

    def resource_owner(self, kind: str, namespace: str, name: str) -> str | None:
        """Who owns a resource: `file` (edit the file), `local` (UI/API), `registry` (synced); None if unknown."""
        entry = self.config.raw.get((kind, namespace, name))
        if entry is None:
            return None
        return entry[0].file if entry[0].file in (LOCAL, REGISTRY) else "file"

    def validate_yaml(self, text: str, *, label: str = "editor") -> list[Document]:
        """Check documents as `fieldgate check` would, together with the running configuration."""
        return self._merged(parse_yaml(text, label))[1]

    def _merged(self, new: list[tuple[Source, Any]], removed: tuple[str, str, str] | None = None
                ) -> tuple[Config, list[Document]]:
        combined = dict(self.config.raw)
        if removed is not None:
            combined.pop(removed, None)
        keys = []
        for source, raw in new:
            key = document_key(raw)
            if key is not None:
                owner = self.resource_owner(*key)
                if key[0] == "Gateway":
                    raise ConfigError(f"{source.prefix()}: the Gateway document is set in the local files only")
                if owner in ("file", REGISTRY):
                    where = self.config.raw[key][0].file if owner == "file" else "the registry"
                    raise ConfigError(f"{source.prefix()}: {key[0]} {key[1]}/{key[2]} is owned by {where}; "
                                      "change it there")
                keys.append(key)
            combined[key or ("?", "?", str(len(combined)))] = (source, raw)
        config = check_documents(combined.values(), self.protocols)
        return config, [doc for doc in config.documents if doc.key in keys]

    async def apply_documents(self, payload: str | list[Document], *, actor: str, address: str = "") -> list[str]:
        """Create or update local resources (YAML text or documents); only changed devices restart."""
        if isinstance(payload, str):
            new = parse_yaml(payload, "editor")
        else:
            new = [(Source("api", i, f"{d.kind} {d.name}"), msgspec.to_builtins(d, enc_hook=enc_hook))
                   for i, d in enumerate(payload, start=1)]
        async with self._config_lock:
            config, documents = self._merged(new)
            for doc in documents:
                source, raw = config.raw[doc.key]
                config.raw[doc.key] = (Source(LOCAL, source.index, source.label), raw)
                await self.store.put_resource(doc.kind, doc.namespace, doc.name,
                                              msgspec.json.encode(doc, enc_hook=enc_hook), LOCAL)
                await self.store.audit(actor, "apply", f"{doc.kind} {doc.namespace}/{doc.name}", "", address)
            await self._reconcile(config)
        return [f"{doc.kind} {doc.namespace}/{doc.name}" for doc in documents]

    async def delete_resource(self, kind: str, namespace: str, name: str, *, actor: str, address: str = "") -> None:
        """Delete a local resource; refused when something still uses it or when it is not local."""
        key = (kind, namespace, name)
        async with self._config_lock:
            owner = self.resource_owner(*key)
            if owner is None:
                raise NotFound(f"no {kind} {namespace}/{name}")
            if owner != LOCAL:
                raise ConfigError(f"{kind} {namespace}/{name} is owned by {owner}; change it there")
            config, _ = self._merged([], removed=key)
            await self.store.delete_resource(kind, namespace, name)
            await self.store.audit(actor, "delete", f"{kind} {namespace}/{name}", "", address)
            await self._reconcile(config)

    async def _reconcile(self, config: Config) -> None:
        """Switch to a new configuration: stop removed devices, start new ones, restart only changed ones."""
        old, self.config = self.config, config
        if old.routes != config.routes or old.endpoints != config.endpoints:
            await self.routes.stop()
            self.routes.start()
            if self.eventbus is not None:
                await self.eventbus.resubscribe()
        stored = await self.store.load_twins()
        previous = {(device_id, prop.name): prop.spec.desired for device_id, device in old.devices.items()
                    for prop in device.properties.values() if prop.spec.desired is not None}
        for device_id in old.devices.keys() - config.devices.keys():
            await self._stop_device(device_id)
            self.twins.pop(device_id, None)
        for device_id, device in config.devices.items():
            before = old.devices.get(device_id)
            if before is not None and same_device(before, device):
                self.pollers[device_id].device = device
                continue
            if before is not None:
                await self._stop_device(device_id)
            self.twins[device_id] = make_twin(device, stored.get(device_id, {}), previous)
            self._start_device(device_id)
            log.info("%s %s", device_id, "restarted with its new configuration" if before else "added")

    async def _retention(self) -> None:
        settings = self.config.gateway.store
        eventbus = self.config.gateway.eventbus
        while True:
            await self.store.prune_history(float(settings.history_max_age), settings.history_max_bytes)
            for outbox, runner in self.sinks.items():
                dropped = await self.store.outbox_trim(outbox, eventbus.outbox_max_messages,
                                                       float(eventbus.outbox_max_age))
                if dropped:
                    runner.stats.dropped += dropped
                    log.warning("outbox %s was full: dropped its %d oldest messages (drop-oldest policy)",
                                outbox, dropped)
            await asyncio.sleep(RETENTION_EVERY)

    # --- the flow of readings -------------------------------------------------------------------------------------

    def _on_report(self, device_id: str, ts: float, values: dict[str, Any]) -> None:
        self.bus.publish(telemetry_topic(device_id), Report(device_id, ts, values))

    def _on_state(self, twin: Twin, state: DeviceState, reason: str) -> None:
        log.info("%s is %s%s", twin.device_id, state, f": {reason}" if reason else "")
        self.bus.publish(state_topic(twin.device_id), DeviceStateChange(twin.device_id, state, reason, time.time()))

    def _store_report(self, topic: str, report: Report) -> None:
        self.store.add_report(report.device, report.ts, report.values)

    # --- queries and commands -------------------------------------------------------------------------------------

    def twin(self, device_id: str) -> Twin:
        twin = self.twins.get(device_id)
        if twin is None:
            raise NotFound(f"no device {device_id}")
        return twin

    def device(self, device_id: str) -> Device:
        bound = self.config.devices.get(device_id)
        if bound is None:
            raise NotFound(f"no device {device_id}")
        return bound.resource

    async def set_desired(self, device_id: str, prop: str, value: Any, *, actor: str = "system",
                          address: str = "") -> TwinProperty:
        """Check and store a desired value; the device's poller writes it and confirms it by reading back."""
        bound = self.config.devices.get(device_id)
        if bound is None:
            raise NotFound(f"no device {device_id}")
        bound_prop = bound.properties.get(prop)
        if bound_prop is None:
            raise NotFound(f"device {device_id} has no property {prop!r}")
        if not bound_prop.writable:
            raise ValueRejected(f"{prop}: the property is {bound_prop.model.access}")
        converted = coerce(bound_prop.model, value)
        now = time.time()
        await self.store.save_desired(device_id, prop, converted, now)
        twin_prop = self.twins[device_id].properties[prop]
        change = TwinChange(device_id, prop, converted, twin_prop.desired, twin_prop.desired_at)
        twin_prop.desired, twin_prop.desired_at, twin_prop.pending = converted, now, True
        self.bus.publish(twin_topic(device_id), change)
        await self.store.audit(actor, "set-desired", f"{device_id}/{prop}", msgspec.json.encode(converted).decode(),
                               address)
        self.pollers[device_id].wake()
        return twin_prop

    def check_desired(self, device_id: str, values: dict[str, Any]) -> None:
        """Raise as set_desired would for the first of several values that cannot be set; set nothing."""
        bound = self.config.devices.get(device_id)
        if bound is None:
            raise NotFound(f"no device {device_id}")
        for prop, value in values.items():
            bound_prop = bound.properties.get(prop)
            if bound_prop is None:
                raise NotFound(f"device {device_id} has no property {prop!r}")
            if not bound_prop.writable:
                raise ValueRejected(f"{prop}: the property is {bound_prop.model.access}")
            coerce(bound_prop.model, value)

    def status(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        lateness: list[float] = []
        for device_id, poller in self.pollers.items():
            state = self.twins[device_id].state
            states[state] = states.get(state, 0) + 1
            lateness.extend(poller.stats.lateness)
        lateness.sort()
        return {
            "node": self.node_name,
            "version": __version__,
            "uptime_s": round(time.time() - self.started_at, 3),
            "devices": {"total": len(self.pollers), **states},
            "cycles": sum(p.stats.cycles for p in self.pollers.values()),
            "missed_cycles": sum(p.stats.missed for p in self.pollers.values()),
            "lateness_ms": {
                "mean": round(statistics.fmean(lateness) * 1000, 3) if lateness else None,
                "p50": round(lateness[len(lateness) // 2] * 1000, 3) if lateness else None,
                "p99": round(lateness[min(int(len(lateness) * 0.99), len(lateness) - 1)] * 1000, 3)
                if lateness else None,
                "max": round(lateness[-1] * 1000, 3) if lateness else None,
            },
            "store": {"values_written": self.store.rows_written, "queued": self.store.queued},
            "eventbus": self.eventbus.describe() if self.eventbus else {"url": "none", "connected": False},
            "sinks": {name: {**runner.describe(), "outbox_depth": self.store.outbox_depth.get(name, 0)}
                      for name, runner in self.sinks.items()},
            "routes": self.routes.describe(),
            "tasks": {name: {"state": s.state, "restarts": s.restarts, "last_error": s.last_error}
                      for name, s in self.supervisor.status.items() if not name.startswith("device ")},
        }


def make_twin(device: BoundDevice, rows: dict[str, dict[str, Any]], previous: dict[tuple[str, str], Any]) -> Twin:
    """A device's twin from its stored rows; a document's desired value wins when it changed since last time."""
    twin = Twin(device.id, {})
    for name, prop in device.properties.items():
        row = rows.get(name, {})
        twin_prop = TwinProperty(reported=row.get("reported"), reported_at=row.get("reported_at"))
        doc_desired = prop.spec.desired
        stored_desired = row.get("desired")
        # A value set through the API survives restarts unless the document's own desired value changed.
        if doc_desired is not None and (stored_desired is None or previous.get((device.id, name)) != doc_desired):
            twin_prop.desired = coerce(prop.model, doc_desired)
        elif stored_desired is not None and prop.writable:
            twin_prop.desired = stored_desired
        twin_prop.desired_at = row.get("desired_at")
        twin_prop.pending = twin_prop.desired is not None and prop.writable
        twin.properties[name] = twin_prop
    return twin


def same_device(before: BoundDevice, after: BoundDevice) -> bool:
    """Nothing a poller uses changed: the document, and the model entry of every property."""
    return before.resource == after.resource and [p.model for p in before.properties.values()] == [
        p.model for p in after.properties.values()]


def document_key(raw: Any) -> tuple[str, str, str] | None:
    if isinstance(raw, dict) and isinstance(raw.get("kind"), str) and isinstance(raw.get("name"), str):
        namespace = raw.get("namespace", "default")
        return (raw["kind"], namespace if isinstance(namespace, str) else "default", raw["name"])
    return None


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"http.listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


class _QuietServer:
    """uvicorn's server without its own signal handling: the CLI owns SIGINT/SIGTERM."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:
                yield

        return Server(config)
