"""The gateway runtime: one asyncio loop running the store, the bus, the device pollers and the web app."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
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
from gateway.protocols.registry import protocol_registry
from gateway.reconfigure import Reconfiguration, make_twin
from gateway.resources.loader import Config, Source, check_documents, load_path
from gateway.resources.schema import Device, enc_hook
from gateway.routes import Routes
from gateway.sinks.base import Sink, SinkRunner
from gateway.store import Store
from gateway.supervisor import Supervisor
from gateway.twin import DeviceState, Twin, TwinProperty
from gateway.values import coerce
from gateway.workloads.supervisor import WorkloadManager

log = logging.getLogger(__name__)
RETENTION_EVERY = 60.0
STATUS_SAMPLES = 20_000
SHUTDOWN_DRAIN = 2.0  # seconds working sinks get to deliver their outbox on a clean shutdown
STOP_STEP = 5.0  # seconds the shutdown hooks, and the web server, get to finish on a stop


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


class Gateway(Reconfiguration):
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
        self.workloads = WorkloadManager(self)
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
            await self.workloads.start(self.config)
            if self.serve_http:
                await self._start_http()
            await self._call_hook("startup")
        except BaseException:
            await self.stop()
            raise
        if self.serve_http and not await self.store.rows("SELECT 1 FROM users LIMIT 1"):
            # No default password ships: the first user is made on the box itself.
            log.warning("no users yet: the web UI has nobody to let in; add an admin with "
                        "`fieldgate user add NAME --role admin --password-stdin --data-dir %s`", self.data_dir)
        log.info("fieldgate %s started: node %s, %d devices, data in %s", __version__, self.node_name,
                 len(self.pollers), self.data_dir)

    async def stop(self) -> None:
        # The pollers first, all at once: under overload they keep the loop busy, and every later step (hooks, the
        # web server, the outboxes) then runs on a quiet loop. Every step is bounded, so a stop ends in seconds.
        await self.supervisor.cancel_many([f"device {device_id}" for device_id in self.pollers])
        self.pollers.clear()
        try:
            async with asyncio.timeout(STOP_STEP):
                await self._call_hook("shutdown")
        except Exception as exc:  # one plugin's failure must not keep the rest from stopping
            log.warning("shutdown hooks: %s", "did not finish in time" if isinstance(exc, TimeoutError) else exc)
        if self.http_server is not None:
            self.http_server.should_exit = True
            if self._http_task is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_STEP):
                        await self._http_task
            self.http_server = None
        await self.workloads.stop()
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
        # create_server's socket has protocol 0, so asyncio would not set TCP_NODELAY on accepted connections:
        # without it every response on a kept-alive connection waits ~40 ms for the delayed ACK.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        rows = await self.store.rows(
            "SELECT kind, name, document, source FROM resources WHERE source IN ('local', 'registry')")
        if not rows:
            return
        raw = list(self.config.raw.values())
        raw += [(Source(source, i, f"{kind} {name}"), self.store.resource_document(kind, doc))
                for i, (kind, name, doc, source) in enumerate(rows, start=1)]
        try:
            self.config = check_documents(raw, self.protocols)
        except ResourceError as exc:
            log.error("resources from the UI, the API or the registry no longer fit the configuration files; "
                      "running without them: %s", "; ".join(exc.problems))

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
        # the one line a device's change of state gets (its poller logs nothing per failed attempt)
        level = logging.WARNING if state in ("offline", "unhealthy") else logging.INFO
        log.log(level, "%s is %s%s", twin.device_id, state, f": {reason}" if reason else "")
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
        # The most recent cycles of every device, at most ~20,000 in all: the figures stay representative and a
        # status call stays cheap (sorting every device's whole history blocked the loop for 0.4 s at 400 devices).
        per_device = max(STATUS_SAMPLES // max(len(self.pollers), 1), 10)
        for device_id, poller in self.pollers.items():
            state = self.twins[device_id].state
            states[state] = states.get(state, 0) + 1
            recent = poller.stats.lateness
            lateness.extend(itertools.islice(reversed(recent), per_device))
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
            "store": {"values_written": self.store.rows_written, "queued": self.store.queued,
                      "history_dropped": self.store.history_dropped},
            "eventbus": self.eventbus.describe() if self.eventbus else {"url": "none", "connected": False},
            "sinks": {name: {**runner.describe(), "outbox_depth": self.store.outbox_depth.get(name, 0)}
                      for name, runner in self.sinks.items()},
            "routes": self.routes.describe(),
            "workloads": self.workloads.status(),
            "tasks": {name: {"state": s.state, "restarts": s.restarts, "last_error": s.last_error}
                      for name, s in self.supervisor.status.items() if not name.startswith("device ")},
        }


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
