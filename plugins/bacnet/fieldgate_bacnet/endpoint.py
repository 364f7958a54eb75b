"""The gateway's own BACnet/IP endpoint: one bacpypes3 application (one UDP socket, one device object of the
gateway's own) per local address, shared by every device that names it, as the Modbus plugin shares a link per
address. Every request has a bounded wait; the answers bacpypes3 raises (errors, rejects, aborts: BaseExceptions)
become gateway ProtocolErrors here, and change-of-value notifications go to the subscriber that asked for them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from bacpypes3.apdu import (
    AbortPDU,
    ConfirmedCOVNotificationRequest,
    ErrorPDU,
    ErrorRejectAbortNack,
    RejectPDU,
    SimpleAckPDU,
    UnconfirmedCOVNotificationRequest,
)
from bacpypes3.app import Application
from bacpypes3.errors import AbortException, ExecutionError, RejectException, ServicesError
from bacpypes3.ipv4.link import NormalLinkLayer
from bacpypes3.local.device import DeviceObject
from bacpypes3.pdu import Address, IPv4Address
from bacpypes3.primitivedata import ObjectIdentifier

from gateway.errors import DeviceTimeout, ProtocolError

log = logging.getLogger(__name__)

BIND_ATTEMPTS = 5
CovReceiver = Callable[[ObjectIdentifier, list[Any]], None]


class DeviceAnswered(ProtocolError):
    """The device answered with an Error (`kind` "error", `reason` "object: unknown-object"), a Reject or an Abort."""

    def __init__(self, message: str, kind: str, reason: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason


class BadAnswer(ProtocolError):
    """An answer that does not decode (or a request bacpypes3 would not build): that request failed, not the link."""


def explain(answer: ErrorRejectAbortNack) -> tuple[str, str]:
    """(kind, reason) of an Error, Reject or Abort answer: ("error", "property: unknown-property")."""
    if isinstance(answer, ErrorPDU):
        return "error", f"{getattr(answer, 'errorClass', '?')}: {getattr(answer, 'errorCode', '?')}"
    if isinstance(answer, RejectPDU):
        return "reject", str(answer.apduAbortRejectReason)
    if isinstance(answer, AbortPDU):
        return "abort", str(answer.apduAbortRejectReason)
    return "error", str(answer)


class GatewayApplication(Application):  # type: ignore[misc]
    """bacpypes3's application with change-of-value notifications routed to their subscribers by (address, process
    identifier), instead of its context managers (whose renewals run unsupervised)."""

    cov_receivers: dict[tuple[Address, int], CovReceiver]

    async def do_ConfirmedCOVNotificationRequest(self, apdu: ConfirmedCOVNotificationRequest) -> None:
        if not self._deliver(apdu):
            raise ServicesError(errorCode="unknownSubscription")
        await self.response(SimpleAckPDU(context=apdu))

    async def do_UnconfirmedCOVNotificationRequest(self, apdu: UnconfirmedCOVNotificationRequest) -> None:
        self._deliver(apdu)

    def _deliver(self, apdu: Any) -> bool:
        receiver = self.cov_receivers.get((apdu.pduSource, int(apdu.subscriberProcessIdentifier)))
        if receiver is None:
            return False
        try:
            receiver(apdu.monitoredObjectIdentifier, list(apdu.listOfValues or []))
        except Exception as exc:  # a subscriber's bug must not break the endpoint's receive path
            log.warning("%s: a change-of-value notification could not be handled: %s", apdu.pduSource, exc,
                        exc_info=exc)
        return True


class Endpoint:
    """One local BACnet/IP address with its application, user count and subscriptions."""

    def __init__(self, key: tuple[str, int], instance: int, timeout: float) -> None:
        self.key = key
        self.instance = instance
        self.timeout = timeout
        self.users = 0
        self.app: GatewayApplication | None = None
        self._next_process_id = 1
        self._starting = asyncio.Lock()

    @property
    def name(self) -> str:
        return f"{self.key[0]}:{self.key[1]}"

    async def start(self, broadcast: str | None = None) -> GatewayApplication:
        """The application, bound on first use; ProtocolError when the address cannot be bound. With `broadcast`
        (the address with its network prefix, `IP/PREFIX:PORT`) it also listens for and sends broadcasts there."""
        async with self._starting:
            if self.app is not None:
                return self.app
            device = DeviceObject(
                objectIdentifier=ObjectIdentifier(("device", self.instance)),
                objectName=f"fieldgate-{self.instance}",
                maxApduLengthAccepted=1476,
                apduTimeout=int(self.timeout * 1000),
                numberOfApduRetries=0,  # retries are the caller's, each with its own bounded wait
            )
            app: GatewayApplication = GatewayApplication.from_object_list([device])
            app.cov_receivers = {}
            address = IPv4Address(broadcast or self.name)
            link = NormalLinkLayer(address, bind_socket=await self._socket()) if broadcast is None else (
                await self._broadcasting_link(address))
            app.link_layers[ObjectIdentifier(("network-port", 1))] = link  # closed with the application
            app.nsap.bind(link, address=address)
            self.app = app
            log.info("BACnet/IP endpoint %s up (device %d)", self.name, self.instance)
            return app

    async def _socket(self) -> socket.socket:
        # The socket is ours: bacpypes3 binds with SO_REUSEPORT and retries for good, so a port another process
        # holds would be shared with it (each getting some of the datagrams) instead of refused at once.
        for attempt in range(BIND_ATTEMPTS):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                sock.bind(self.key)
                sock.setblocking(False)
                return sock
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE or attempt == BIND_ATTEMPTS - 1:
                    raise ProtocolError(f"BACnet/IP endpoint {self.name}: cannot bind ({exc})") from exc
            # the endpoint's previous socket (its devices reconnecting) closes with the loop's next turns
            await asyncio.sleep(0.05)
        raise AssertionError("unreachable")

    async def _broadcasting_link(self, address: IPv4Address) -> NormalLinkLayer:
        """bacpypes3's own link with a second socket on the network's broadcast address (as Linux needs)."""
        (await self._socket()).close()  # taken by someone else: said at once, as without broadcasts
        link = NormalLinkLayer(address)
        tasks = list(getattr(link.server, "_transport_tasks", []))
        try:
            async with asyncio.timeout(5):
                await asyncio.gather(*tasks)
        except (TimeoutError, OSError) as exc:
            for task in tasks:
                task.cancel()
            link.close()
            raise ProtocolError(f"BACnet/IP endpoint {address}: cannot bind its broadcast address "
                                f"{address.addrBroadcastTuple[0]}:{self.key[1]} ({exc or 'in use'})") from None
        return link

    def process_id(self) -> int:
        """A subscriber process identifier not used by this endpoint yet (22 bits, as BACnet allows)."""
        assert self.app is not None
        while True:
            pid = self._next_process_id
            self._next_process_id = self._next_process_id % 0x3FFFFF + 1
            if all(key[1] != pid for key in self.app.cov_receivers):
                return pid

    async def call(self, what: str, make: Callable[[GatewayApplication], Awaitable[Any]], *, timeout: float,
                   retries: int) -> Any:
        """Run one confirmed service (`make(app)`), `retries` more times when unanswered; the device's Error, Reject
        or Abort becomes DeviceAnswered, silence DeviceTimeout."""
        app = await self.start()
        for attempt in range(retries + 1):
            try:
                async with asyncio.timeout(timeout + 0.5):  # bacpypes3 gives up after `timeout` by itself
                    return await make(app)
            except TimeoutError:
                pass
            except AbortPDU as answer:
                if str(answer.apduAbortRejectReason) != "no-response":
                    kind, reason = explain(answer)
                    raise DeviceAnswered(f"{what}: device answered {kind} ({reason})", kind, reason) from None
            except ErrorRejectAbortNack as answer:
                kind, reason = explain(answer)
                raise DeviceAnswered(f"{what}: device answered {kind} ({reason})", kind, reason) from None
            except (ValueError, TypeError, AttributeError, KeyError, IndexError, RejectException, AbortException,
                    ExecutionError) as exc:
                # bacpypes3 could not make sense of an answer (or of what was asked): garbage, not silence
                raise BadAnswer(f"{what}: bad answer ({type(exc).__name__}: {exc})") from exc
            log.debug("%s: no answer (attempt %d of %d)", what, attempt + 1, retries + 1)
        raise DeviceTimeout(f"{what}: no answer within {timeout:g}s ({retries + 1} attempts)")

    def close(self) -> None:
        if self.app is not None:
            app, self.app = self.app, None
            app.close()
            log.info("BACnet/IP endpoint %s closed", self.name)


_endpoints: dict[tuple[str, int], tuple[asyncio.AbstractEventLoop, Endpoint]] = {}


def acquire(key: tuple[str, int], instance: int, timeout: float) -> Endpoint:
    """The endpoint at `key` in the running loop, made on first use; release it with `release`."""
    loop = asyncio.get_running_loop()
    entry = _endpoints.get(key)
    if entry is None or entry[0] is not loop or entry[0].is_closed():
        entry = (loop, Endpoint(key, instance, timeout))
        _endpoints[key] = entry
    endpoint = entry[1]
    if endpoint.instance != instance:
        if endpoint.users:
            raise ProtocolError(f"BACnet/IP endpoint {endpoint.name}: devices sharing it disagree on "
                                f"local_instance ({instance} vs {endpoint.instance})")
        endpoint = Endpoint(key, instance, timeout)
        _endpoints[key] = (loop, endpoint)
    endpoint.users += 1
    return endpoint


def release(endpoint: Endpoint) -> None:
    endpoint.users -= 1
    if endpoint.users <= 0:
        endpoint.close()
        entry = _endpoints.get(endpoint.key)
        if entry is not None and entry[1] is endpoint:
            del _endpoints[endpoint.key]
