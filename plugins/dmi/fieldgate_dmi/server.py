"""The gateway's DMI server: KubeEdge's `DeviceManagerService` on a unix socket, the mappers that registered with it,
and the calls of their `DeviceMapperService` that keep each mapper's devices and models in step with the documents.

A mapper registers for one protocol (the latest registration of a protocol wins, as in edgecore) and gets the `dmi`
devices whose `mapper` names that protocol, with their models. Afterwards every change of the configuration is
diffed against what each mapper holds: new models are created, changed ones updated, new devices registered, changed
ones (a desired value included) updated, and what is gone removed. A mapper that cannot be reached is tried again
with a backoff; one that registers again gets everything anew.

Reports (`ReportDeviceStatus`, `ReportDeviceStates`) are checked whole before anything is kept: an unknown device or
property, a value that is not of the property's type, or a call above `max_message_bytes` is refused with a gRPC
status, and the server goes on. What is kept is read by the devices' pollers through the `dmi` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from fieldgate_dmi import wire
from fieldgate_dmi.config import DmiConfig, DmiProperties
from fieldgate_dmi.convert import device_message, model_message, model_name, reported_value
from gateway.api import GatewayAPI
from gateway.errors import ConfigError, ProtocolError, ValueRejected
from gateway.logs import Throttle
from gateway.protocols.base import BoundDevice
from gateway.resources.values import short

log = logging.getLogger(__name__)
_internal_errors = Throttle(log, 300.0)

PROTOCOL = "dmi"
OFFLINE_STATES = frozenset({"offline", "disconnected"})
UNHEALTHY_STATES = frozenset({"unhealthy"})
NAME_MAX = 253
STATE_MAX = 64
ADDRESS_MAX = 107  # bytes of a unix socket path
RETRY_MIN, RETRY_MAX = 1.0, 30.0
STOP_GRACE = 0.5
PROBLEMS_SHOWN = 5
# A mapper that restarts is reachable again soon: retry its socket often (gRPC's default waits up to 2 minutes).
CHANNEL_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 5000)]
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})

_servers: list[DmiServer] = []


def server_for(device_id: str) -> DmiServer:
    """The DMI server of the gateway that has this device; ProtocolError when no gateway serves DMI."""
    for server in _servers:
        if device_id in server.gateway.devices():
            return server
    raise ProtocolError("the gateway serves no DMI socket for mappers: add an Endpoint of type dmi")


class Refused(Exception):
    """A call from a mapper is refused with this gRPC status and detail."""

    def __init__(self, code: grpc.StatusCode, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class MapperUnreachable(ProtocolError):
    """A mapper's socket did not answer: nothing more is sent to it until it does (or registers again)."""


class MapperRefused(ProtocolError):
    """A mapper answered a call with an error."""


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _fingerprint(message: Any) -> bytes:
    data: bytes = message.SerializeToString(deterministic=True)
    return data


@dataclass(eq=False)
class Mapper:
    """A registered mapper: who it is, where it listens, what it holds (as last sent), and whether it answers."""

    name: str
    version: str
    protocol: str
    address: str
    devices: dict[str, bytes] = field(default_factory=dict)
    models: dict[tuple[str, str], bytes] = field(default_factory=dict)
    problem: str | None = None
    channel: grpc.aio.Channel | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def describe(self) -> str:
        return f"mapper {self.name!r} (protocol {self.protocol}, at {self.address})"

    def method(self, name: str) -> Callable[..., Awaitable[Any]]:
        if self.channel is None:
            self.channel = grpc.aio.insecure_channel(f"unix:{self.address}", options=CHANNEL_OPTIONS)
        call: Callable[..., Awaitable[Any]] = self.channel.unary_unary(
            wire.method_path("DeviceMapperService", name), request_serializer=_serialize,
            response_deserializer=wire.RESPONSES[name].FromString)
        return call

    def reachable(self, problem: str | None) -> None:
        """Record whether the last call reached the mapper; each change is logged once."""
        if problem is not None and self.problem is None:
            log.warning("%s cannot be reached: %s", self.describe(), problem)
        elif problem is None and self.problem is not None:
            log.info("%s answers again", self.describe())
        self.problem = problem

    async def close(self) -> None:
        channel, self.channel = self.channel, None
        if channel is not None:
            await channel.close()


@dataclass(eq=False)
class DeviceReports:
    """What the mappers reported of one device: the latest value per property, when the last report came and the
    last state reported."""

    since: float
    values: dict[str, Any] = field(default_factory=dict)
    heard: float | None = None
    state: str = ""


def silence_limit(device: BoundDevice) -> float:
    """Seconds without a report after which a device is offline: its timeout plus its shortest collect interval
    (a mapper reports the twin of each property once per collect cycle)."""
    config: DmiConfig = device.config
    cycles = [bound.collect_interval for bound in device.properties.values()]
    return float(device.resource.timeout) + min(cycles, default=float(config.state_report_interval))


class SocketFile:
    """The server's socket at its path: bound inside a private directory beside it, made owner-only, then moved in
    place, so it is never reachable with looser permissions; a stale one (nobody listening) is replaced, a live
    one or another kind of file is left alone."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.directory: Path | None = None
        self.identity: tuple[int, int] | None = None

    def prepare(self) -> str:
        """Check the path and make the private directory; the address to bind."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        self._check_existing()
        self.directory = Path(tempfile.mkdtemp(prefix=".dmi-", dir=self.path.parent))
        return f"unix:{self.directory / 's'}"

    def _check_existing(self) -> None:
        try:
            found = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(found.st_mode):
            raise ConfigError(f"{self.path} exists and is not a socket: not replacing it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(1.0)
            try:
                probe.connect(str(self.path))
            except OSError:
                log.info("%s: replacing a stale socket (nobody listens on it)", self.path)
                return
        raise ConfigError(f"{self.path}: another process serves this socket (edgecore, or another gateway)")

    def publish(self) -> None:
        """Make the bound socket owner-only and move it to its path."""
        assert self.directory is not None
        bound = self.directory / "s"
        os.chmod(bound, 0o600)
        os.replace(bound, self.path)
        found = os.stat(self.path)
        self.identity = (found.st_dev, found.st_ino)
        self.directory.rmdir()
        self.directory = None

    def remove(self) -> None:
        """Remove the socket if it is still ours (not one a successor put there), and the private directory."""
        if self.identity is not None:
            with contextlib.suppress(OSError):
                found = os.lstat(self.path)
                if (found.st_dev, found.st_ino) == self.identity:
                    self.path.unlink()
            self.identity = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


class DmiServer:
    """The DMI side of one gateway: `run()` is its supervised task."""

    def __init__(self, gateway: GatewayAPI, properties: DmiProperties) -> None:
        self.gateway = gateway
        self.properties = properties
        self.mappers: dict[str, Mapper] = {}
        self.reports: dict[str, DeviceReports] = {}
        self._wake = asyncio.Event()
        self._refusals: dict[tuple[str, str, str], str] = {}

    # --- lifecycle ------------------------------------------------------------------------------------------------

    def attach(self) -> None:
        """Make this server the one the gateway's `dmi` devices read from."""
        _servers.append(self)

    async def detach(self) -> None:
        with contextlib.suppress(ValueError):
            _servers.remove(self)
        for mapper in self.mappers.values():
            await mapper.close()

    async def run(self) -> None:
        """Serve the socket and keep the mappers in step until cancelled; the socket is removed on the way out."""
        place = SocketFile(Path(self.properties.socket))
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", self.properties.max_message_bytes)])
        server.add_generic_rpc_handlers((self._handlers(),))
        started = False
        try:
            server.add_insecure_port(place.prepare())
            await server.start()
            started = True
            place.publish()
            log.info("DMI server listening on %s", place.path)
            await self._sync_forever()
        finally:
            if started:
                await server.stop(STOP_GRACE)
            place.remove()
            for mapper in self.mappers.values():
                await mapper.close()

    def changed(self) -> None:
        """The configuration changed: forget what no longer applies and bring the mappers in step."""
        devices = self.gateway.devices()
        for device_id in list(self.reports):
            device = devices.get(device_id)
            if device is None or device.resource.protocol.name != PROTOCOL:
                del self.reports[device_id]
        self._wake.set()

    # --- what the mappers should hold -------------------------------------------------------------------------------

    def devices_of(self, protocol: str) -> dict[str, BoundDevice]:
        """The `dmi` devices a mapper of this protocol serves, by id."""
        return {device_id: device for device_id, device in self.gateway.devices().items()
                if device.resource.protocol.name == PROTOCOL and device.config.mapper == protocol}

    def _desired(self, device_id: str) -> dict[str, tuple[Any, float | None]]:
        twin = self.gateway.twins().get(device_id)
        if twin is None:
            return {}
        return {name: (prop.desired, prop.desired_at) for name, prop in twin.properties.items()}

    def wanted(self, protocol: str, only: str | None = None) -> tuple[dict[tuple[str, str], Any], dict[str, Any]]:
        """The DMI models and devices a mapper of this protocol should hold (of one device, with `only`)."""
        config = self.gateway.config
        devices = self.devices_of(protocol)
        if only is not None:
            devices = {only: devices[only]} if only in devices else {}
        models: dict[tuple[str, str], Any] = {}
        if only is None:
            for doc in config.models.values():
                if doc.protocol == protocol:
                    models[(doc.namespace, doc.name)] = model_message(doc.name, doc.namespace, doc.properties)
        for device in devices.values():
            key = (device.resource.namespace, model_name(device))
            if key not in models:
                named = config.models.get(key)
                properties = named.properties if named is not None else [b.model for b in device.properties.values()]
                models[key] = model_message(key[1], key[0], properties)
        messages = {device_id: device_message(device, self._desired(device_id))
                    for device_id, device in devices.items()}
        return models, messages

    # --- calls to the mappers -------------------------------------------------------------------------------------

    async def _call(self, mapper: Mapper, method: str, what: str, request: Any) -> None:
        try:
            await mapper.method(method)(request, timeout=float(self.properties.call_timeout))
        except grpc.aio.AioRpcError as exc:
            detail = f"{method} {what}: {exc.code().name}: {short(exc.details() or '', 200)}"
            if exc.code() in UNREACHABLE:
                mapper.reachable(detail)
                raise MapperUnreachable(f"{mapper.describe()} cannot be reached: {detail}") from None
            mapper.reachable(None)
            key = (mapper.protocol, method, what)
            if self._refusals.get(key) != detail:
                log.warning("%s refused %s", mapper.describe(), detail)
                self._refusals[key] = detail
            raise MapperRefused(f"{mapper.describe()} refused {detail}") from None
        mapper.reachable(None)
        self._refusals.pop((mapper.protocol, method, what), None)

    async def sync(self, mapper: Mapper, only: str | None = None) -> list[str]:
        """Send a mapper what changed since it was last in step (for one device, with `only`); the calls that failed.
        Stops at the first call that does not reach the mapper."""
        failed: list[str] = []
        async with mapper.lock:
            models, devices = self.wanted(mapper.protocol, only)
            try:
                for key, model in models.items():
                    data = _fingerprint(model)
                    if mapper.models.get(key) == data:
                        continue
                    try:
                        if key in mapper.models:
                            await self._call(mapper, "UpdateDeviceModel", f"{key[0]}/{key[1]}",
                                             wire.REQUESTS["UpdateDeviceModel"](model=model))
                        else:
                            await self._call(mapper, "CreateDeviceModel", f"{key[0]}/{key[1]}",
                                             wire.REQUESTS["CreateDeviceModel"](model=model))
                        mapper.models[key] = data
                    except MapperRefused as exc:
                        failed.append(str(exc))
                for device_id, device in devices.items():
                    data = _fingerprint(device)
                    if mapper.devices.get(device_id) == data:
                        continue
                    method = "UpdateDevice" if device_id in mapper.devices else "RegisterDevice"
                    try:
                        await self._call(mapper, method, device_id, wire.REQUESTS[method](device=device))
                        mapper.devices[device_id] = data
                    except MapperRefused as exc:
                        failed.append(str(exc))
                if only is not None:
                    return failed
                for device_id in sorted(mapper.devices.keys() - devices.keys()):
                    namespace, name = device_id.split("/", 1)
                    try:
                        await self._call(mapper, "RemoveDevice", device_id, wire.REQUESTS["RemoveDevice"](
                            deviceName=name, deviceNamespace=namespace))
                        del mapper.devices[device_id]
                    except MapperRefused as exc:
                        failed.append(str(exc))
                for key in sorted(mapper.models.keys() - models.keys()):
                    try:
                        await self._call(mapper, "RemoveDeviceModel", f"{key[0]}/{key[1]}",
                                         wire.REQUESTS["RemoveDeviceModel"](modelName=key[1], modelNamespace=key[0]))
                        del mapper.models[key]
                    except MapperRefused as exc:
                        failed.append(str(exc))
            except MapperUnreachable as exc:
                failed.append(str(exc))
        return failed

    async def _sync_forever(self) -> None:
        delay = RETRY_MIN
        behind = False
        while True:
            try:
                async with asyncio.timeout(delay if behind else None):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            behind = False
            for mapper in list(self.mappers.values()):
                if await self.sync(mapper):
                    behind = True
            delay = min(delay * 2, RETRY_MAX) if behind else RETRY_MIN

    async def deliver(self, device_id: str) -> None:
        """Send a device's desired values to its mapper now, as edgecore does: an UpdateDevice whose properties
        carry them (RegisterDevice when the mapper does not hold the device yet). Without a registered mapper they
        wait in the twin and go with the device when one registers."""
        device = self.gateway.devices().get(device_id)
        if device is None:
            return
        mapper = self.mappers.get(device.config.mapper)
        if mapper is None:
            return
        failed = await self.sync(mapper, only=device_id)
        if failed:
            raise ProtocolError(failed[0])

    # --- what the devices' pollers read --------------------------------------------------------------------------

    def _reports(self, device_id: str) -> DeviceReports:
        reports = self.reports.get(device_id)
        if reports is None:
            reports = self.reports[device_id] = DeviceReports(since=time.monotonic())
        return reports

    def live(self, device: BoundDevice) -> DeviceReports:
        """A device's reports while its mapper keeps reporting; ProtocolError (the device is offline) when the
        mapper said the device is offline or disconnected, or has been silent beyond the device's limit."""
        reports = self._reports(device.id)
        if reports.state in OFFLINE_STATES:
            raise ProtocolError(f"the mapper reports the device {reports.state}")
        limit = silence_limit(device)
        now = time.monotonic()
        if now - (reports.heard if reports.heard is not None else reports.since) <= limit:
            return reports
        protocol = device.config.mapper
        mapper = self.mappers.get(protocol)
        if mapper is None:
            raise ProtocolError(f"no mapper has registered for protocol {protocol!r}")
        why = f"; {mapper.problem}" if mapper.problem is not None else ""
        if reports.heard is None:
            raise ProtocolError(f"no report from {mapper.describe()} within {limit:g}s{why}")
        raise ProtocolError(f"no report from {mapper.describe()} for {now - reports.heard:.0f}s (more than "
                            f"{limit:g}s){why}")

    # --- the DeviceManagerService ---------------------------------------------------------------------------------

    def _handlers(self) -> grpc.GenericRpcHandler:
        methods = {"MapperRegister": (self.mapper_register, wire.MapperRegisterRequest),
                   "ReportDeviceStatus": (self.report_device_status, wire.ReportDeviceStatusRequest),
                   "ReportDeviceStates": (self.report_device_states, wire.ReportDeviceStatesRequest)}
        return grpc.method_handlers_generic_handler(wire.MANAGER_SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(_guarded(name, handler), request_deserializer=request.FromString,
                                                      response_serializer=_serialize)
            for name, (handler, request) in methods.items()})

    async def mapper_register(self, request: Any) -> Any:
        """A mapper comes online: keep where it listens and answer with its protocol's devices and models."""
        info = request.mapper
        protocol = _text("mapper.protocol", info.protocol, NAME_MAX)
        if not protocol:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "mapper.protocol is empty: a mapper registers for one "
                                                            "protocol")
        name = _text("mapper.name", info.name, NAME_MAX)
        version = _text("mapper.version", info.version, NAME_MAX)
        try:
            address = bytes(info.address).decode()
        except UnicodeDecodeError:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "mapper.address is not UTF-8 text") from None
        if not address.startswith("/") or "\x00" in address or len(address.encode()) > ADDRESS_MAX:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"mapper.address: expected the absolute path of the "
                                                            f"mapper's unix socket, got {short(address)}")
        previous = self.mappers.get(protocol)
        if previous is not None:
            await previous.close()
        mapper = Mapper(name=name, version=version, protocol=protocol, address=address)
        models, devices = self.wanted(protocol)
        response = wire.MapperRegisterResponse()
        if request.withData:
            response.modelList.extend(models.values())
            response.deviceList.extend(devices.values())
        # Without data the mapper keeps what it holds, as edgecore assumes: it is taken as in step.
        mapper.models = {key: _fingerprint(model) for key, model in models.items()}
        mapper.devices = {device_id: _fingerprint(device) for device_id, device in devices.items()}
        self.mappers[protocol] = mapper
        now = time.monotonic()
        for device_id in devices:
            self._reports(device_id).since = now  # it got its devices just now: give it its time to report
        log.info("%s registered (version %s): %d devices, %d models", mapper.describe(), version or "?",
                 len(devices), len(models))
        return response

    def _device(self, name: str, namespace: str) -> BoundDevice:
        name = _text("deviceName", name, NAME_MAX)
        namespace = _text("deviceNamespace", namespace, NAME_MAX) or "default"
        device_id = f"{namespace}/{name}"
        device = self.gateway.devices().get(device_id)
        if device is None or device.resource.protocol.name != PROTOCOL:
            raise Refused(grpc.StatusCode.NOT_FOUND, f"no device {device_id} that a mapper serves (protocol "
                                                     f"{PROTOCOL}) on this gateway")
        return device

    async def report_device_status(self, request: Any) -> Any:
        """A mapper reports twins: every reported value must be of its property's type, or nothing is kept."""
        device = self._device(request.deviceName, request.deviceNamespace)
        if not request.HasField("reportedDevice") or not request.reportedDevice.twins:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{device.id}: the report holds no twins")
        values: dict[str, Any] = {}
        problems: list[str] = []
        for twin in request.reportedDevice.twins:
            bound = device.properties.get(twin.propertyName)
            if bound is None:
                problems.append(f"{short(twin.propertyName)}: not a property of the device")
            elif twin.HasField("reported"):
                try:
                    values[bound.name] = reported_value(bound.model, twin.reported.value)
                except ValueRejected as exc:
                    problems.append(str(exc))
        if problems:
            more = f" (and {len(problems) - PROBLEMS_SHOWN} more)" if len(problems) > PROBLEMS_SHOWN else ""
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{device.id}: {'; '.join(problems[:PROBLEMS_SHOWN])}{more}")
        reports = self._reports(device.id)
        reports.values.update(values)
        reports.heard = time.monotonic()
        if values and reports.state in OFFLINE_STATES:
            reports.state = ""  # values read from the device say it is reachable again
        return wire.ReportDeviceStatusResponse()

    async def report_device_states(self, request: Any) -> Any:
        """A mapper reports a device's state: `ok`/`online`, `unhealthy`, `offline`/`disconnected`, `unknown`."""
        device = self._device(request.deviceName, request.deviceNamespace)
        state = _text("state", request.state, STATE_MAX).strip().lower()
        if not state or not state.isprintable():
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{device.id}: expected a state such as ok, online, "
                                                            f"offline or unhealthy, got {short(request.state)}")
        reports = self._reports(device.id)
        reports.state = state
        reports.heard = time.monotonic()
        return wire.ReportDeviceStatesResponse()


def _text(field_name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"{field_name}: {len(value)} characters, above {limit}")
    return value


def _guarded(name: str, handler: Callable[[Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    """A handler whose refusals become gRPC statuses, and whose bugs an INTERNAL status, never a stopped server."""

    async def handle(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await handler(request)
        except Refused as exc:
            await context.abort(exc.code, exc.detail)
        except Exception as exc:
            _internal_errors.log(logging.WARNING, f"{name} {type(exc).__name__}", "DMI %s failed: %s", name, exc,
                                 exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error ({type(exc).__name__})")

    return handle
