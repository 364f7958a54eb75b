"""One OPC UA session for one device, through asyncua's raw services: connect with security and login, resolve the
visitors' nodes, subscribe, read, write.

Imported only when an `opcua` device opens (asyncua takes a quarter of a second to import). Subscription values are
kept as the server delivers them (in the session's publish task) and handed out by `take_changes`, so the
poller's read of a subscribed property costs no request.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Client, ua
from asyncua.common.ua_utils import data_type_to_variant_type
from asyncua.crypto import security_policies
from cryptography.hazmat.primitives import serialization

from fieldgate_opcua import certs
from fieldgate_opcua.config import OpcuaConfig, OpcuaVisitor, parse_browse_path
from gateway.errors import DeviceTimeout, ProtocolError
from gateway.protocols.base import BoundDevice, BoundProperty

log = logging.getLogger(__name__)


class _LostConnectionNoise(logging.Filter):
    """Drops asyncua's traceback of a publish request that failed because the connection went: the device's state
    says that once (the publish task ends with the session, or is retried on a connection that is back)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Publish iteration crashed") or not record.exc_info:
            return True
        exc = record.exc_info[1]
        return not isinstance(exc, ConnectionError | TimeoutError | ua.UaStatusCodeError)


if logging.getLogger("asyncua").level == logging.NOTSET:
    # asyncua logs every connect, subscription and revised parameter at INFO: a line per device and reconnect
    # that says nothing the device's state does not, and warns of every connection it finds closed; errors show
    logging.getLogger("asyncua").setLevel(logging.ERROR)
logging.getLogger("asyncua.client.ua_session.UaSession").addFilter(_LostConnectionNoise())

READ_CHUNK = 500  # nodes per Read request; servers limit it (MaxNodesPerRead), commonly to 1000 or more
SUBSCRIBE_CHUNK = 500  # monitored items per CreateMonitoredItems request
KEEPALIVE = 2.0  # seconds between the server's keep-alive messages on a quiet subscription
_VARIANT_BY_NAME = {name: ua.VariantType[name] for name in (
    "Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64", "Float", "Double",
    "String", "ByteString")}
_INTEGER_RANGES = {
    ua.VariantType.SByte: (-(1 << 7), (1 << 7) - 1), ua.VariantType.Byte: (0, (1 << 8) - 1),
    ua.VariantType.Int16: (-(1 << 15), (1 << 15) - 1), ua.VariantType.UInt16: (0, (1 << 16) - 1),
    ua.VariantType.Int32: (-(1 << 31), (1 << 31) - 1), ua.VariantType.UInt32: (0, (1 << 32) - 1),
    ua.VariantType.Int64: (-(1 << 63), (1 << 63) - 1), ua.VariantType.UInt64: (0, (1 << 64) - 1),
}
_FLOAT32_MAX = 3.4028234663852886e38
# asyncua annotates its Boolean fields with a placeholder class (bool cannot be subclassed); plain bools are right
TRUE: ua.Boolean = True  # type: ignore[assignment]
FALSE: ua.Boolean = False  # type: ignore[assignment]
_status_names: dict[int, str] = {}


def status_name(code: int) -> str:
    """`BadSensorFailure` for its code (cached: a bad item is named on every read)."""
    name = _status_names.get(code)
    if name is None:
        try:
            name = ua.StatusCode(ua.UInt32(code)).name
        except Exception:  # a code no table knows
            name = f"0x{code:08X}"
        if len(_status_names) < 4096:  # a server sending made-up codes must not grow it without end
            _status_names[code] = name
    return name


@dataclass(eq=False)
class Slot:
    """One property's node: where it is, how it comes, and the latest the subscription delivered."""

    name: str
    visitor: OpcuaVisitor
    sampling_interval: float  # seconds
    node_id: ua.NodeId | None = None
    error: str | None = None  # why the node cannot be read at all (unresolved path, refused monitored item)
    variant_type: ua.VariantType | None = None
    latest: ua.DataValue | None = None  # the newest notification not yet taken
    bad: str | None = None  # the status name while the subscription reports a bad or uncertain value
    subscribed: bool = False


@dataclass
class Changes:
    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Session:
    """The connection of one `opcua` device; all methods run on the device's task but the publish callback."""

    def __init__(self, device: BoundDevice, data_dir: Path | None) -> None:
        self.device = device
        self.config: OpcuaConfig = device.config
        self.data_dir = data_dir
        self.slots: dict[str, Slot] = {}
        for name, bound in device.properties.items():
            self.slots[name] = _slot(bound)
        self._client: Client | None = None
        self._connected = False
        self._lost: str | None = None
        self._subscription_id: int | None = None
        self._handles: dict[int, Slot] = {}
        self._changed: set[Slot] = set()
        self._last_publish = 0.0
        self._stale_after = math.inf
        self._read_back: set[str] = set()  # written subscribed properties: read once directly to confirm

    # --- connect ------------------------------------------------------------------------------------------------

    async def open(self) -> None:
        config = self.config
        client = Client(config.endpoint, timeout=config.timeout, watchdog_intervall=max(1.0, config.timeout / 2))
        client.name = client.description = "fieldgate"
        client.product_uri = "urn:fieldgate"
        client.session_timeout = 60_000  # ms the server keeps a session whose gateway vanished; a new one is made
        self._client = client
        try:
            if config.secure:
                await self._secure(client)
            await self._login(client)
            client.connection_lost_callback = self._connection_lost
            await client.connect()
            self._connected = True
            await self._resolve(client)
            await self._subscribe(client)
        except (ProtocolError, asyncio.CancelledError):
            await self.close()
            raise
        except Exception as exc:
            await self.close()
            raise translate(exc, f"cannot connect to {config.endpoint}") from exc

    async def _secure(self, client: Client) -> None:
        config = self.config
        folder = self.data_dir / "opcua" if self.data_dir is not None else None
        if config.certificate is not None and config.private_key is not None:
            cert_file, key_file = Path(config.certificate), Path(config.private_key)
            try:
                own = await asyncio.to_thread(certs.load_certificate, cert_file)
            except (OSError, ValueError) as exc:
                raise ProtocolError(f"certificate {cert_file}: cannot read it as a certificate: {exc}") from exc
            client.application_uri = certs.application_uri_of(own) or certs.default_application_uri()
        elif folder is not None:
            made = await asyncio.to_thread(certs.application_certificate, folder)
            cert_file, key_file, client.application_uri = made.certificate, made.private_key, made.application_uri
        else:
            raise ProtocolError("security_policy Basic256Sha256 needs the gateway's certificate: give certificate "
                                "and private_key (the gateway makes one in its data dir when it runs the device)")
        endpoints = await client.connect_and_get_server_endpoints()
        policy_uri = security_policies.SecurityPolicyBasic256Sha256.URI
        mode = getattr(ua.MessageSecurityMode, config.mode)
        chosen = [e for e in endpoints if e.SecurityPolicyUri == policy_uri and e.SecurityMode == mode]
        if not chosen:
            offered = ", ".join(sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]}/{e.SecurityMode.name}"
                                        for e in endpoints})) or "none"
            raise ProtocolError(f"the server offers no endpoint with {config.security_policy}/{config.mode} "
                                f"(it offers {offered})")
        try:
            server_cert = certs.first_certificate(chosen[0].ServerCertificate or b"")
        except ValueError as exc:
            raise ProtocolError(f"the server sent no usable certificate with its endpoint: {exc}") from exc
        trusted = Path(config.trusted_certificates) if config.trusted_certificates else (
            folder / "trusted" if folder is not None else None)
        if config.server_certificate is None and trusted is None:
            raise ProtocolError("cannot check the server's certificate: give server_certificate or "
                                "trusted_certificates")
        await asyncio.to_thread(
            certs.check_server_certificate, server_cert,
            pinned=Path(config.server_certificate) if config.server_certificate else None,
            trusted=trusted or Path("."), rejected=folder / "rejected" if folder is not None else None)
        try:
            await client.set_security(
                security_policies.SecurityPolicyBasic256Sha256, str(cert_file), str(key_file),
                server_certificate=server_cert.public_bytes(serialization.Encoding.DER), mode=mode)
        except (OSError, ValueError, TypeError) as exc:
            raise ProtocolError(f"cannot use the certificate {cert_file} with the key {key_file}: {exc}") from exc

    async def _login(self, client: Client) -> None:
        config = self.config
        if config.login == "username":
            client.set_user(config.username or "")
            password = config.password
            if config.password_file is not None:
                try:
                    text = await asyncio.to_thread(Path(config.password_file).read_text, encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    raise ProtocolError(f"password_file {config.password_file}: {exc}") from exc
                password = text.splitlines()[0] if text else ""
            if password is not None:
                client.set_password(password)
        elif config.login == "certificate":
            cert = config.user_certificate or config.certificate
            key = config.user_private_key or config.private_key
            if cert is None or key is None:
                if self.data_dir is None:
                    raise ProtocolError("login certificate needs user_certificate and user_private_key")
                made = await asyncio.to_thread(certs.application_certificate, self.data_dir / "opcua")
                cert, key = str(made.certificate), str(made.private_key)
            try:
                await client.load_client_certificate(cert)
                await client.load_private_key(Path(key))
            except (OSError, ValueError, TypeError) as exc:
                raise ProtocolError(f"cannot load the login certificate {cert} or its key {key}: {exc}") from exc

    async def _connection_lost(self, exc: Exception) -> None:
        self._lost = f"lost the connection to {self.config.endpoint}: {describe_exception(exc)}"

    async def _resolve(self, client: Client) -> None:
        """NodeIds of every visitor: parsed, namespace URIs looked up, browse paths translated in one request."""
        namespaces: list[str] | None = None
        paths: list[tuple[Slot, ua.BrowsePath]] = []
        for slot in self.slots.values():
            visitor = slot.visitor
            if visitor.node_id is not None:
                try:
                    parsed = ua.NodeId.from_string(visitor.node_id)
                except Exception as exc:
                    slot.error = f"{visitor.node_id}: {exc}"
                    continue
                if isinstance(parsed, ua.ExpandedNodeId) and parsed.NamespaceUri:
                    if namespaces is None:
                        namespaces = await client.get_namespace_array()
                    if parsed.NamespaceUri not in namespaces:
                        slot.error = f"{visitor.node_id}: the server has no namespace {parsed.NamespaceUri}"
                        continue
                    parsed = ua.NodeId(parsed.Identifier, ua.Int16(namespaces.index(parsed.NamespaceUri)),
                                       parsed.NodeIdType)
                slot.node_id = parsed
            elif visitor.browse_path is not None:
                elements = [ua.RelativePathElement(
                    ReferenceTypeId=standard_node(ua.ObjectIds.HierarchicalReferences), IsInverse=FALSE,
                    IncludeSubtypes=TRUE, TargetName=ua.QualifiedName(name, ua.UInt16(index)))
                    for index, name in parse_browse_path(visitor.browse_path)]
                objects = standard_node(ua.ObjectIds.ObjectsFolder)
                paths.append((slot, ua.BrowsePath(objects, ua.RelativePath(elements))))
        for start in range(0, len(paths), READ_CHUNK):
            chunk = paths[start:start + READ_CHUNK]
            results = await client.uaclient.translate_browsepaths_to_nodeids([path for _, path in chunk])
            for (slot, _), result in zip(chunk, results, strict=False):
                if not result.StatusCode.is_good():
                    slot.error = f"browse path {slot.visitor.browse_path}: {status_name(result.StatusCode.value)}"
                elif not result.Targets:
                    slot.error = f"browse path {slot.visitor.browse_path}: no node"
                else:
                    target = result.Targets[0].TargetId
                    slot.node_id = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
        for slot in self.slots.values():
            if slot.node_id is None and slot.error is None:  # a server that answered fewer paths than asked
                slot.error = f"{slot.visitor.where}: the server named no node"

    async def _subscribe(self, client: Client) -> None:
        """One subscription for every subscribed property; a monitored item the server refuses fails its property."""
        wanted = [s for s in self.slots.values() if s.visitor.mode == "subscription" and s.node_id is not None]
        if not wanted:
            return
        shortest = min(s.sampling_interval for s in wanted)
        interval = float(self.config.publishing_interval or shortest) * 1000
        params = ua.CreateSubscriptionParameters(
            RequestedPublishingInterval=interval,
            RequestedMaxKeepAliveCount=max(1, math.ceil(KEEPALIVE * 1000 / interval)),
            MaxNotificationsPerPublish=0, PublishingEnabled=True, Priority=0)
        params.RequestedLifetimeCount = params.RequestedMaxKeepAliveCount * 10
        created = await client.uaclient.create_subscription(params, self._on_publish)
        self._subscription_id = created.SubscriptionId
        # a quiet subscription still sends a keep-alive every RevisedMaxKeepAliveCount intervals: three missed
        # in a row (and a request timeout) mean it is gone although the connection looks alive
        keepalive = max(created.RevisedPublishingInterval, 10) / 1000 * max(created.RevisedMaxKeepAliveCount, 1)
        self._stale_after = 3 * keepalive + self.config.timeout
        self._last_publish = time.monotonic()
        for start in range(0, len(wanted), SUBSCRIBE_CHUNK):
            chunk = wanted[start:start + SUBSCRIBE_CHUNK]
            requests = []
            for slot in chunk:
                handle = len(self._handles) + 1
                self._handles[handle] = slot
                requests.append(_monitored_item(slot, handle))
            results = await client.uaclient.create_monitored_items(ua.CreateMonitoredItemsParameters(
                SubscriptionId=created.SubscriptionId, TimestampsToReturn=ua.TimestampsToReturn.Neither,
                ItemsToCreate=requests))
            for slot, result in zip(chunk, results, strict=False):
                if result.StatusCode.is_good():
                    slot.subscribed = True
                else:
                    slot.error = f"cannot subscribe to {slot.visitor.where}: {status_name(result.StatusCode.value)}"
        for slot in wanted:
            if not slot.subscribed and slot.error is None:  # a server that answered fewer items than asked
                slot.error = f"cannot subscribe to {slot.visitor.where}: the server made no monitored item"

    def _on_publish(self, result: ua.PublishResult) -> None:
        """The session's publish task delivers every answer here, keep-alives too: keep the newest values."""
        self._last_publish = time.monotonic()
        notifications = result.NotificationMessage.NotificationData
        if not notifications:
            return
        handles, changed = self._handles, self._changed
        for notification in notifications:
            if isinstance(notification, ua.DataChangeNotification):
                for item in notification.MonitoredItems:
                    slot = handles.get(item.ClientHandle)
                    if slot is not None:
                        slot.latest = item.Value
                        changed.add(slot)
            elif isinstance(notification, ua.StatusChangeNotification):
                code = notification.Status.value if notification.Status is not None else 0
                if code & 0x80000000 and self._lost is None:  # asyncua says BadShutdown after a lost connection too
                    self._lost = f"the server ended the subscription: {status_name(code)}"

    # --- read ---------------------------------------------------------------------------------------------------

    def check_alive(self) -> None:
        """Raise DeviceTimeout when the connection or the subscription is gone: the poller reconnects."""
        if self._lost is not None:
            raise DeviceTimeout(self._lost)
        if self._subscription_id is not None and time.monotonic() - self._last_publish > self._stale_after:
            self._lost = f"no word from the subscription for {self._stale_after:.0f}s"
            raise DeviceTimeout(self._lost)

    def take_changes(self, names: Iterable[str], out: Changes) -> None:
        """What the subscription delivered for these properties since they were last taken; a property whose
        value is bad stays failed until a good one comes."""
        for name in names:
            slot = self.slots[name]
            if slot.error is not None:
                out.errors[name] = slot.error
                continue
            if slot in self._changed:
                self._changed.discard(slot)
                data = slot.latest
                slot.latest = None
                if data is not None:
                    reason = _put(name, data, out)
                    slot.bad = reason
                    continue
            if slot.bad is not None:
                out.errors[name] = slot.bad

    def needs_read(self, name: str) -> bool:
        """A property read by request: polled, or subscribed and just written (its read-back confirms the write)."""
        return self.slots[name].visitor.mode == "poll" or name in self._read_back

    async def read(self, names: Sequence[str], out: Changes) -> None:
        """Read the current values of these properties in as few Read requests as the server takes."""
        client = self._require()
        wanted = []
        for name in names:
            slot = self.slots[name]
            self._read_back.discard(name)
            if slot.node_id is None:
                out.errors[name] = slot.error or f"{slot.visitor.where}: not resolved"
            else:
                wanted.append(slot)
        for start in range(0, len(wanted), READ_CHUNK):
            chunk = wanted[start:start + READ_CHUNK]
            params = ua.ReadParameters(TimestampsToReturn=ua.TimestampsToReturn.Neither, NodesToRead=[
                ua.ReadValueId(NodeId=slot.node_id, AttributeId=ua.AttributeIds.Value) for slot in chunk])
            results = await self._call(client.uaclient.read(params), "read")
            if len(results) != len(chunk):
                raise ProtocolError(f"the server answered {len(results)} values for {len(chunk)} nodes")
            for slot, data in zip(chunk, results, strict=True):
                reason = _put(slot.name, data, out)
                if slot.subscribed:
                    slot.bad = reason
                    self._changed.discard(slot)  # what the read brought is newer than a notification waiting

    # --- write --------------------------------------------------------------------------------------------------

    async def write(self, prop: BoundProperty, value: Any) -> None:
        client = self._require()
        slot = self.slots[prop.name]
        if slot.node_id is None:
            raise ProtocolError(f"{prop.name}: {slot.error or 'node not resolved'}")
        if slot.variant_type is None:
            slot.variant_type = await self._variant_type(client, slot)
        try:
            variant = to_variant(value, slot.variant_type)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(f"{prop.name}: cannot write {value!r} as {slot.variant_type.name}: {exc}") from exc
        params = ua.WriteParameters(NodesToWrite=[ua.WriteValue(
            NodeId=slot.node_id, AttributeId=ua.AttributeIds.Value, Value=ua.DataValue(variant))])
        results = await self._call(client.uaclient.write(params), "write")
        code = results[0].value if results else 0x80000000
        if code & 0x80000000:
            raise ProtocolError(f"{prop.name}: the server refused the value {value!r}: {status_name(code)}")
        if slot.visitor.mode == "subscription":
            self._read_back.add(prop.name)

    async def _variant_type(self, client: Client, slot: Slot) -> ua.VariantType:
        """The type a value is written as: the visitor's data_type, else the node's DataType (its built-in base for
        a derived or enumerated type; the current value's type for an abstract one like Number)."""
        if slot.visitor.data_type is not None:
            return _VARIANT_BY_NAME[slot.visitor.data_type]
        assert slot.node_id is not None
        node = client.get_node(slot.node_id)
        try:
            data_type: ua.NodeId = await self._call(node.read_data_type(), "read the data type of")
            if data_type.NamespaceIndex == 0 and isinstance(data_type.Identifier, int) and \
                    1 <= data_type.Identifier <= 25:
                variant_type = ua.VariantType(data_type.Identifier)
            else:
                variant_type = await self._call(data_type_to_variant_type(client.get_node(data_type)),
                                                "look up the data type of")
            if variant_type == ua.VariantType.Variant:
                variant_type = (await self._call(node.read_data_value(raise_on_bad_status=False),
                                                 "read")).Value.VariantType
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(f"{slot.name}: cannot learn the data type of {slot.visitor.where}: "
                                f"{describe_exception(exc)}") from exc
        return variant_type

    # --- helpers ------------------------------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The open connection (for the browser's walk)."""
        return self._require()

    def _require(self) -> Client:
        self.check_alive()
        if self._client is None:
            raise DeviceTimeout("not connected")
        return self._client

    async def _call(self, call: Any, what: str) -> Any:
        """One request, its failures turned into the gateway's errors (a dead connection: DeviceTimeout)."""
        try:
            return await call
        except (ProtocolError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise translate(exc, f"{what} failed") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            if self._connected:  # a failed connect cleaned up after itself
                async with asyncio.timeout(min(self.config.timeout, 2.0)):
                    # ends asyncua's own tasks, then closes the session (refused at once on a dead connection)
                    await client.disconnect()
        except Exception as exc:
            log.debug("%s: disconnect: %s", self.device.id, describe_exception(exc))
        finally:
            try:
                client.disconnect_socket()
            except Exception:
                pass
            await _stop_publishing(client)


async def _stop_publishing(client: Client) -> None:
    """The session's publish task survives a disconnect from a dead connection: end it, or it retries forever."""
    task = getattr(client.uaclient.session, "_publish_task", None)
    if isinstance(task, asyncio.Task) and not task.done():
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):
            pass


def standard_node(identifier: int) -> ua.NodeId:
    """A node of the standard namespace by its number (ua.ObjectIds)."""
    return ua.NodeId(ua.Int32(identifier))


def status_code(data: ua.DataValue) -> int:
    """A DataValue's status code (a missing one is Good)."""
    return data.StatusCode.value if data.StatusCode is not None else 0


def _slot(bound: BoundProperty) -> Slot:
    visitor: OpcuaVisitor = bound.visitor
    interval = visitor.sampling_interval if visitor.sampling_interval is not None else bound.collect_interval
    return Slot(bound.name, visitor, float(interval))


def _monitored_item(slot: Slot, handle: int) -> ua.MonitoredItemCreateRequest:
    visitor = slot.visitor
    params = ua.MonitoringParameters(ClientHandle=handle, SamplingInterval=slot.sampling_interval * 1000,
                                     QueueSize=1, DiscardOldest=True)
    if visitor.deadband:
        params.Filter = ua.DataChangeFilter(  # encoded as the ExtensionObject it is
            Trigger=ua.DataChangeTrigger.StatusValue,
            DeadbandType=ua.DeadbandType.Absolute if visitor.deadband_type == "absolute" else ua.DeadbandType.Percent,
            DeadbandValue=visitor.deadband)
    return ua.MonitoredItemCreateRequest(
        ItemToMonitor=ua.ReadValueId(NodeId=slot.node_id, AttributeId=ua.AttributeIds.Value),
        MonitoringMode=ua.MonitoringMode.Reporting, RequestedParameters=params)


def _put(name: str, data: ua.DataValue, out: Changes) -> str | None:
    """A value with a good status into `out.values`, else its status name into `out.errors`; the error or None."""
    code = status_code(data)
    if code & 0xC0000000:  # Bad (0b10…) and Uncertain (0b01…): not a value to report as good
        reason = status_name(code)
        out.errors[name] = reason
        return reason
    variant = data.Value
    try:
        out.values[name] = plain(variant.Value if variant is not None else None)
    except ValueError as exc:
        out.errors[name] = reason = str(exc)
        return reason
    return None


def plain(value: Any) -> Any:
    """An OPC UA scalar as a value of the twin (bool, int, float, str, bytes); ValueError for what is none."""
    kind = type(value)
    if kind is float or kind is int or kind is bool or kind is str or kind is bytes:
        return value
    if value is None:
        raise ValueError("no value (null)")
    # enumerations and other subclasses, as their plain type
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value).upper()
    if isinstance(value, ua.LocalizedText):
        return value.Text or ""
    if isinstance(value, ua.QualifiedName | ua.NodeId):
        return value.to_string()
    if isinstance(value, ua.StatusCode):
        return status_name(value.value)
    if isinstance(value, list | tuple):
        raise ValueError(f"an array of {len(value)} values (only scalars are read)")
    raise ValueError(f"a {type(value).__name__} value (only scalars are read)")


def to_variant(value: Any, variant_type: ua.VariantType) -> ua.Variant:
    """A twin value (already of its model type) as the node's type: integers checked against its range, floats
    rounded (never truncated) into an integer type, numbers to text for a String node."""
    if variant_type == ua.VariantType.Boolean:
        if isinstance(value, bool):
            return ua.Variant(value, variant_type)
        if isinstance(value, int | float) and value in (0, 1):
            return ua.Variant(bool(value), variant_type)
        raise ValueError("a Boolean takes true/false or 0/1")
    if variant_type in _INTEGER_RANGES:
        if isinstance(value, bool):
            number = int(value)
        elif isinstance(value, int):
            number = value
        elif isinstance(value, float) and math.isfinite(value):
            number = math.floor(abs(value) + 0.5) * (1 if value >= 0 else -1)
        else:
            raise ValueError("not a number")
        low, high = _INTEGER_RANGES[variant_type]
        if not low <= number <= high:
            raise ValueError(f"{number} is outside {low}..{high}")
        return ua.Variant(number, variant_type)
    if variant_type in (ua.VariantType.Float, ua.VariantType.Double):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("not a number")
        real = float(value)
        if variant_type == ua.VariantType.Float and abs(real) > _FLOAT32_MAX:
            raise ValueError("above the largest Float")
        return ua.Variant(real, variant_type)
    if variant_type == ua.VariantType.String:
        return ua.Variant(value if isinstance(value, str) else str(value), variant_type)
    if variant_type == ua.VariantType.ByteString:
        if isinstance(value, bytes):
            return ua.Variant(value, variant_type)
        raise ValueError("a ByteString takes bytes")
    if variant_type == ua.VariantType.LocalizedText and isinstance(value, str):
        return ua.Variant(ua.LocalizedText(value), variant_type)
    raise ValueError(f"writing a {variant_type.name} is not supported")


def describe_exception(exc: BaseException) -> str:
    if isinstance(exc, ua.UaStatusCodeError):
        return status_name(exc.code)
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


# What a refusal by the server means for the operator, by status name.
_HINTS = {
    "BadUserAccessDenied": "the server refused the login",
    "BadIdentityTokenInvalid": "the server refused the login",
    "BadIdentityTokenRejected": "the server refused the login",
    "BadCertificateUntrusted": "the server does not trust the gateway's certificate (add it to the server's trusted "
                               "certificates)",
    "BadSecurityChecksFailed": "the server refused the secure channel (does it trust the gateway's certificate?)",
    "BadCertificateUriInvalid": "the server refused the gateway's certificate (its application URI)",
    "BadSecurityPolicyRejected": "the server does not offer this security policy",
}


def translate(exc: BaseException, what: str) -> ProtocolError:
    """An asyncua or socket failure as the gateway's error: a refusal is a ProtocolError naming the status, a lost
    or silent connection a DeviceTimeout (the poller reconnects either way)."""
    if isinstance(exc, ua.UaStatusCodeError):
        name = status_name(exc.code)
        hint = _HINTS.get(name)
        text = f"{what}: {hint} ({name})" if hint else f"{what}: {name}"
        if name in ("BadSessionIdInvalid", "BadSessionClosed", "BadConnectionClosed", "BadSecureChannelClosed",
                    "BadServerHalted", "BadShutdown", "BadTimeout", "BadCommunicationError"):
            return DeviceTimeout(text)
        return ProtocolError(text)
    if isinstance(exc, TimeoutError):
        return DeviceTimeout(f"{what}: no answer in time")
    if isinstance(exc, ConnectionError | OSError):
        return DeviceTimeout(f"{what}: {exc}")
    return ProtocolError(f"{what}: {describe_exception(exc)}")
