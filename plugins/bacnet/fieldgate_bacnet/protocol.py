"""The `bacnet-ip` protocol: ReadPropertyMultiple reads within the device's APDU size (else ReadProperty),
change-of-value subscriptions renewed in the device's own reads (else polling), writes with a priority."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from bacpypes3.apdu import (
    ErrorRejectAbortNack,
    ReadPropertyACK,
    ReadPropertyMultipleACK,
    ReadPropertyMultipleRequest,
    ReadPropertyRequest,
    SubscribeCOVRequest,
)
from bacpypes3.basetypes import PropertyIdentifier, PropertyReference, ReadAccessSpecification, ServicesSupported
from bacpypes3.constructeddata import SequenceOf
from bacpypes3.pdu import Address
from bacpypes3.primitivedata import Null, ObjectIdentifier

from fieldgate_bacnet import endpoint as endpoints
from fieldgate_bacnet.config import MAX_APDU, BacnetConfig, BacnetVisitor, model_types
from fieldgate_bacnet.endpoint import BadAnswer, DeviceAnswered, Endpoint, GatewayApplication, explain
from fieldgate_bacnet.planner import ReadPlan, Request, plan_reads, split
from fieldgate_bacnet.values import array_index, decode, decode_notified, wire_value
from gateway.errors import DeviceTimeout, ProtocolError
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult

log = logging.getLogger(__name__)

OUR_MAX_APDU = 1476  # what the gateway's endpoint accepts (its device object says so)
UNKNOWN_MAX_APDU = 480  # a device that does not say: the common size of small controllers
SEGMENTS = 8  # answers a segmenting device may split into, counted in the read budget
SUBSCRIBES_PER_READ = 8  # subscriptions made or renewed in one read at most: the rest follow in the next ones
COV_PROPERTIES = frozenset({"present-value", "status-flags"})  # what a COV notification carries (standard objects)
TOO_LONG = frozenset({"segmentation-not-supported", "buffer-overflow", "apdu-too-long", "window-size-out-of-range"})
SERVICE_BITS: dict[str, int] = dict(getattr(ServicesSupported, "_bitstring_names", {}))
NO_SUCH_SERVICE = frozenset({"unrecognized-service", "services: service-request-denied",
                             "services: optional-functionality-not-supported"})


@dataclass
class Subscription:
    """One SubscribeCOV for one object of the device."""

    object_id: str
    process_id: int
    active_until: float = 0.0  # loop time: values from its notifications stand for reads until then
    renew_at: float = 0.0
    refused: str = ""  # why the device would not (then polled; asked again at renew_at)


@dataclass(frozen=True)
class DeviceAbilities:
    max_apdu: int
    segmenting: bool
    read_multiple: bool
    cov: bool


class BacnetIp(Protocol):
    names: ClassVar[tuple[str, ...]] = ("bacnet-ip",)
    config_type = BacnetConfig
    visitor_type = BacnetVisitor
    config: BacnetConfig

    def __init__(self, device: BoundDevice) -> None:
        super().__init__(device)
        self.config = device.config
        ip, port = self.config.device_address
        self.where = f"{device.id} (BACnet device {self.config.device_instance} at {ip}:{port})"
        self._address = Address(f"{ip}:{port}")
        self._endpoint: Endpoint | None = None
        self._abilities = DeviceAbilities(UNKNOWN_MAX_APDU, False, self.config.read_multiple, self.config.cov)
        self._subscriptions: dict[str, Subscription] = {}
        self._notified: dict[tuple[str, str], Any] = {}  # (object, property) -> the last value a notification gave
        self._reachable = False
        self._vendor = 0  # the device's vendor identifier: the types of its objects' properties

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return model_types(visitor)

    # --- connection ---------------------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._endpoint is None:
            c = self.config
            self._endpoint = endpoints.acquire(c.endpoint, c.local_instance, c.timeout)
        await self._endpoint.start()
        device = f"device,{self.config.device_instance}"
        try:
            # the device object answers for the address and the instance, and says what the device can do
            await self._read_property(device, "object-name")
        except DeviceAnswered as exc:
            raise ProtocolError(f"{self.where}: no device object {device} there ({exc.reason}): check address and "
                                "device_instance") from exc
        except ValueError:
            pass  # a name that does not decode: the device answered all the same
        self._vendor = _number(await self._optional(device, "vendor-identifier", 0), 0)
        max_apdu = _number(await self._optional(device, "max-apdu-length-accepted", UNKNOWN_MAX_APDU),
                           UNKNOWN_MAX_APDU)
        segmentation = await self._optional(device, "segmentation-supported", 3)
        services = await self._optional(device, "protocol-services-supported", None)
        offered = _services(services)
        self._abilities = DeviceAbilities(
            max_apdu=self.config.max_apdu or max(50, min(max_apdu or UNKNOWN_MAX_APDU, MAX_APDU)),
            segmenting=segmentation in (0, 1),  # segmented-both, segmented-transmit
            read_multiple=self.config.read_multiple and offered.get("read-property-multiple", True),
            cov=self.config.cov and offered.get("subscribe-cov", True),
        )
        self._reachable = True
        log.debug("%s: %s", self.where, self._abilities)

    async def _optional(self, object_id: str, prop: str, default: Any) -> Any:
        try:
            return await self._read_property(object_id, prop)
        except (DeviceAnswered, BadAnswer, ValueError):
            return default

    async def close(self) -> None:
        if self._endpoint is None:
            return
        endpoint, self._endpoint = self._endpoint, None
        app = endpoint.app
        try:
            if app is not None and self._reachable:
                for sub in self._subscriptions.values():
                    if sub.active_until and not sub.refused:
                        await self._cancel(endpoint, app, sub)
        finally:
            if app is not None:
                for sub in self._subscriptions.values():
                    app.cov_receivers.pop((self._address, sub.process_id), None)
            self._subscriptions.clear()
            endpoints.release(endpoint)

    async def _cancel(self, endpoint: Endpoint, app: GatewayApplication, sub: Subscription) -> None:
        """Tell the device to stop sending (a subscription with neither lifetime nor confirmation cancels)."""
        request = SubscribeCOVRequest(
            subscriberProcessIdentifier=sub.process_id,
            monitoredObjectIdentifier=ObjectIdentifier(sub.object_id),
            destination=self._address,
        )
        try:
            await endpoint.call(f"{self.where}: cancelling COV of {sub.object_id}", lambda a: a.request(request),
                                timeout=self.config.timeout, retries=0)
        except ProtocolError as exc:
            log.debug("%s", exc)
            self._reachable = False  # the others would wait for nothing as well

    # --- reads --------------------------------------------------------------------------------------------------

    def plan(self, properties: Sequence[BoundProperty]) -> ReadPlan:
        a = self._abilities
        budget = min(a.max_apdu, OUR_MAX_APDU) * (SEGMENTS if a.segmenting else 1)
        return plan_reads([(p.name, p.visitor) for p in properties], budget)

    async def read(self, plan: Any) -> ReadResult:
        if not isinstance(plan, ReadPlan):
            plan = self.plan(plan)
        result = ReadResult()
        await self._keep_subscriptions(plan)
        failure: ProtocolError | None = None
        pending = list(plan.requests)
        while pending:
            request = pending.pop(0)
            try:
                await self._read_request(request, result)
            except DeviceTimeout as exc:
                self._reachable = False
                failure = exc
                for later in [request, *pending]:
                    for name in later.names:
                        result.errors.setdefault(name, str(exc) if later is request else f"skipped: {exc}")
                break
            except ProtocolError as exc:
                failure = exc
                for name in request.names:
                    result.errors.setdefault(name, str(exc))
        if not result.values and failure is not None:
            raise failure
        return result

    async def _read_request(self, request: Request, result: ReadResult) -> None:
        wanted = [(name, visitor) for name, visitor in zip(request.names, request.visitors, strict=True)
                  if not self._from_notifications(name, visitor, result)]
        if not wanted:
            return
        if len(wanted) == 1 or not self._abilities.read_multiple:
            for name, visitor in wanted:
                await self._read_single(name, visitor, result)
            return
        try:
            values = await self._read_multiple(wanted)
        except DeviceAnswered as exc:
            if exc.reason in NO_SUCH_SERVICE or (exc.kind == "reject" and exc.reason != "buffer-overflow"):
                log.info("%s: ReadPropertyMultiple refused (%s): reading property by property", self.where,
                         exc.reason)
                self._abilities = DeviceAbilities(self._abilities.max_apdu, self._abilities.segmenting, False,
                                                  self._abilities.cov)
            elif exc.reason in TOO_LONG:
                first, second = split(Request(tuple(n for n, _ in wanted), tuple(v for _, v in wanted), 0))
                log.debug("%s: the answer was too long (%s): asking in two halves", self.where, exc.reason)
                await self._read_request(first, result)
                await self._read_request(second, result)
                return
            # an error for the whole request (every object unknown, say): each property gets its own reason
            for name, visitor in wanted:
                await self._read_single(name, visitor, result)
            return
        for (name, visitor), (value, error) in zip(wanted, values, strict=True):
            if error:
                result.errors[name] = f"{visitor.describe()}: {error}"
            else:
                result.values[name] = value

    async def _read_single(self, name: str, visitor: BacnetVisitor, result: ReadResult) -> None:
        try:
            result.values[name] = await self._read_property(visitor.object_id, str(visitor.property), visitor.index)
        except (DeviceAnswered, BadAnswer) as exc:
            result.errors[name] = f"{visitor.describe()}: {getattr(exc, 'reason', exc)}"
        except ValueError as exc:
            result.errors[name] = f"{visitor.describe()}: {exc}"

    async def _read_property(self, object_id: str, prop: str, index: int | None = None) -> Any:
        """One property's plain value (ReadProperty); ValueError when the answer does not decode."""
        assert self._endpoint is not None
        what = f"{self.where}: reading {object_id} {prop}" + (f"[{index}]" if index is not None else "")
        request = ReadPropertyRequest(objectIdentifier=ObjectIdentifier(object_id),
                                      propertyIdentifier=PropertyIdentifier(prop), destination=self._address)
        if index is not None:
            request.propertyArrayIndex = index
        answer = await self._endpoint.call(what, lambda app: app.request(request), timeout=self.config.timeout,
                                           retries=self.config.retries)
        if not isinstance(answer, ReadPropertyACK):
            raise BadAnswer(f"{what}: not a ReadProperty-ACK: {type(answer).__name__}")
        return decode(self._vendor, object_id.split(",")[0], prop, index, answer.propertyValue)

    async def _read_multiple(self, wanted: list[tuple[str, BacnetVisitor]]) -> list[tuple[Any, str]]:
        """(value, "") or (None, reason) per property, in the order asked; each value decoded on its own."""
        assert self._endpoint is not None
        specs: dict[str, list[PropertyReference]] = {}
        for _, visitor in wanted:
            reference = PropertyReference(propertyIdentifier=PropertyIdentifier(str(visitor.property)))
            if visitor.index is not None:
                reference.propertyArrayIndex = visitor.index
            specs.setdefault(visitor.object_id, []).append(reference)
        request = ReadPropertyMultipleRequest(
            listOfReadAccessSpecs=SequenceOf(ReadAccessSpecification)([
                ReadAccessSpecification(objectIdentifier=ObjectIdentifier(object_id),
                                        listOfPropertyReferences=references)
                for object_id, references in specs.items()]),
            destination=self._address,
        )
        what = f"{self.where}: reading {len(wanted)} properties of {len(specs)} objects"
        answer = await self._endpoint.call(what, lambda app: app.request(request), timeout=self.config.timeout,
                                           retries=self.config.retries)
        if not isinstance(answer, ReadPropertyMultipleACK):
            raise BadAnswer(f"{what}: not a ReadPropertyMultiple-ACK: {type(answer).__name__}")
        found: dict[tuple[str, str, int | None], tuple[Any, str]] = {}
        for access in answer.listOfReadAccessResults or []:
            object_id = access.objectIdentifier
            for element in access.listOfResults or []:
                prop = str(PropertyIdentifier(element.propertyIdentifier))
                index = array_index(element.propertyArrayIndex)
                key = (str(object_id), prop, index)
                error = element.readResult.propertyAccessError
                if error is not None:
                    found[key] = (None, f"{error.errorClass}: {error.errorCode}")
                    continue
                try:
                    found[key] = (decode(self._vendor, object_id[0], prop, index, element.readResult.propertyValue),
                                  "")
                except ValueError as exc:
                    found[key] = (None, str(exc))
        return [found.get((v.object_id, str(v.property), v.index), (None, "missing from the device's answer"))
                for _, v in wanted]

    # --- change of value ----------------------------------------------------------------------------------------

    def _from_notifications(self, name: str, visitor: BacnetVisitor, result: ReadResult) -> bool:
        """Serve a property from its subscription's notifications while the subscription stands."""
        if not visitor.cov or visitor.index is not None:
            return False
        sub = self._subscriptions.get(visitor.object_id)
        if sub is None or sub.refused or sub.active_until <= asyncio.get_running_loop().time():
            return False
        key = (visitor.object_id, str(visitor.property))
        if key not in self._notified:
            return False
        result.values[name] = self._notified[key]
        return True

    async def _keep_subscriptions(self, plan: ReadPlan) -> None:
        """Subscribe to the plan's objects (those with present-value or status-flags read by COV), or renew their
        subscriptions at half their lifetime: a few each read, so a device of many objects is not asked for all
        of them at once. A renewal the device does not answer ends the subscription: the properties are read again
        (and their errors show the device's state)."""
        if not self._abilities.cov or self._endpoint is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        budget = SUBSCRIBES_PER_READ
        for visitor in (v for request in plan.requests for v in request.visitors):
            if budget == 0:
                return
            if not visitor.cov or visitor.index is not None or visitor.property not in COV_PROPERTIES:
                continue
            sub = self._subscriptions.get(visitor.object_id)
            if sub is not None and sub.renew_at > now:
                continue
            budget -= 1
            await self._subscribe(visitor.object_id, sub)

    async def _subscribe(self, object_id: str, sub: Subscription | None) -> None:
        endpoint = self._endpoint
        assert endpoint is not None
        app = await endpoint.start()
        if sub is None:
            sub = self._subscriptions[object_id] = Subscription(object_id, endpoint.process_id())
            app.cov_receivers[(self._address, sub.process_id)] = self._notification
        lifetime = self.config.cov_lifetime
        request = SubscribeCOVRequest(
            subscriberProcessIdentifier=sub.process_id,
            monitoredObjectIdentifier=ObjectIdentifier(object_id),
            issueConfirmedNotifications=self.config.cov_confirmed,
            lifetime=lifetime,
            destination=self._address,
        )
        loop = asyncio.get_running_loop()
        try:
            await endpoint.call(f"{self.where}: subscribing to {object_id}", lambda a: a.request(request),
                                timeout=self.config.timeout, retries=self.config.retries)
        except DeviceAnswered as exc:
            if exc.reason in NO_SUCH_SERVICE or exc.kind == "reject":
                log.info("%s: SubscribeCOV refused (%s): polling instead", self.where, exc.reason)
                self._abilities = DeviceAbilities(self._abilities.max_apdu, self._abilities.segmenting,
                                                  self._abilities.read_multiple, False)
            elif not sub.refused:
                log.info("%s: no COV for %s (%s): polling it", self.where, object_id, exc.reason)
            sub.refused, sub.active_until = exc.reason, 0.0
            sub.renew_at = loop.time() + lifetime  # resources may free up: ask again later
            return
        except DeviceTimeout:
            sub.active_until = sub.renew_at = 0.0  # polled again, and asked again in the next read
            raise
        now = loop.time()
        # the subscription stands for its lifetime; renewing at half of it leaves room for an unanswered try
        sub.refused, sub.active_until, sub.renew_at = "", now + lifetime, now + lifetime / 2

    def _notification(self, object_id: ObjectIdentifier, values: list[Any]) -> None:
        """A change-of-value notification: the values of this device's properties that follow it, pushed."""
        obj = str(object_id)
        pushed = ReadResult()
        for property_value in values:
            try:
                prop, index, value = decode_notified(self._vendor, object_id[0], property_value)
            except (ValueError, TypeError, AttributeError) as exc:
                log.debug("%s: a notification about %s held a value that does not decode: %s", self.where, obj, exc)
                continue
            if index is not None:
                continue
            self._notified[(obj, prop)] = value
            for name, bound in self.device.properties.items():
                visitor: BacnetVisitor = bound.visitor
                if visitor.cov and visitor.index is None and visitor.object_id == obj and visitor.property == prop:
                    pushed.values[name] = value
        if pushed.values:
            self.push(pushed)

    # --- writes -------------------------------------------------------------------------------------------------

    async def write(self, prop: BoundProperty, value: Any) -> None:
        visitor: BacnetVisitor = prop.visitor
        try:
            wire = wire_value(visitor, value)
        except (ValueError, TypeError) as exc:
            raise ProtocolError(f"{self.where}: {prop.name}: {exc}") from exc
        await self._write(prop.name, visitor, wire)

    async def relinquish(self, prop: BoundProperty) -> None:
        """Give up the gateway's command: write Null at the property's priority (the device falls back on lower
        priorities, then on its relinquish-default)."""
        await self._write(prop.name, prop.visitor, Null(()))

    async def _write(self, name: str, visitor: BacnetVisitor, wire: Any) -> None:
        if self._endpoint is None:
            raise ProtocolError(f"{self.where}: not open")
        priority = visitor.write_priority
        what = (f"{self.where}: writing {name} to {visitor.describe()}"
                + (f" at priority {priority}" if priority is not None else ""))
        # the read-back that confirms the write must ask the device, not the last notification
        self._notified.pop((visitor.object_id, str(visitor.property)), None)
        answer = await self._endpoint.call(
            what, lambda app: app.write_property(self._address, ObjectIdentifier(visitor.object_id),
                                                 str(visitor.property), wire, visitor.index, priority),
            timeout=self.config.timeout, retries=self.config.retries)
        if isinstance(answer, ErrorRejectAbortNack):
            kind, reason = explain(answer)
            raise DeviceAnswered(f"{what}: device answered {kind} ({reason})", kind, reason)
        if isinstance(answer, str):  # bacpypes3 knows no type for the property: nothing was sent
            raise ProtocolError(f"{what}: {answer.strip('-')}")


def _number(value: Any, default: int) -> int:
    """A whole number the device sent, or `default` for anything else (a device may answer what it likes)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _services(bits: Any) -> dict[str, bool]:
    """The services a protocol-services-supported bit string ("0101…") offers, by name ({} when unknown)."""
    if not isinstance(bits, str):
        return {}
    return {service: bit < len(bits) and bits[bit] == "1" for service, bit in SERVICE_BITS.items()}
