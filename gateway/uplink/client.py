"""The uplink to the registry (a built-in plugin): once the node has joined (<data-dir>/registry/registry.json),
a supervised task heartbeats over mutual TLS with node info, the twins that changed (gateway.uplink.twins) and the
counters of its registry-owned routes (gateway.uplink.routes),
applies the registry's resources for the node whenever their resource version changes and the desired values the
registry answers with. A second task long-polls the registry for REST messages meant for this
node (`POST /api/v1/messages/<node>/<ns>/<path>` on the registry), hands each to the rest routes of namespace <ns>
whose source path is <path>, and acknowledges it once it is durable in the routes' outboxes; a message in the
`_fieldgate` namespace is a request of the registry instead, answered over mutual TLS: the node's recent log or a
workload's, or the stop, start or restart of a registry-owned workload (gateway.uplink.requests; the node refuses
any other). An upgrade task named in a heartbeat answer is started once and its status reported with every heartbeat
(gateway.uplink.upgrade). It keeps the gateway working while the registry is unreachable. What goes over the wire is
gateway.wire's Structs."""

from __future__ import annotations

import asyncio
import base64
import logging
import platform
import time
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from gateway import __version__
from gateway.api import REGISTRY
from gateway.channel import Stream
from gateway.decoding import decode_json
from gateway.errors import ConfigError, FieldgateError
from gateway.ops.osupdate import system_state
from gateway.ops.sampler import NodeSampler
from gateway.plugins import list_plugins
from gateway.resources.schema import AnyDocument, dec_hook
from gateway.uplink.channel import ChannelLink
from gateway.uplink.join import expired_certificate
from gateway.uplink.requests import answer_request
from gateway.uplink.routes import RouteSync
from gateway.uplink.services import ServiceEventSync
from gateway.uplink.twins import TwinSync
from gateway.uplink.upgrade import NodeUpgrade
from gateway.uplink.workloads import FiguresSync, WorkloadSync
from gateway.wire import (
    LOGS_NAMESPACE,
    MAX_HEARTBEAT,
    RELAY_STREAM,
    SERVICE_STREAM,
    AckRequest,
    HeartbeatResponse,
    NodeMessage,
)
from gateway.workloads.accelerators import node_accelerators

if TYPE_CHECKING:
    from gateway.api import GatewayAPI
    from gateway.uplink.failover import OfflineFailover
    from gateway.uplink.join import RegistrySettings

log = logging.getLogger(__name__)
TIMEOUT = 10.0
MESSAGE_WAIT = 25.0  # seconds a message poll waits at the registry for a message
MAX_ADDRESSES = 16
SEEN_MESSAGES = 10_000  # message ids remembered, so a message repeated after a dropped link is taken once


def interface_addresses() -> list[str]:
    """The node's IP addresses (not loopback or link-local), for the registry's node page."""
    import ipaddress
    import socket

    import psutil

    found: list[str] = []
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                ip = ipaddress.ip_address(address.address.split("%", 1)[0])
            except ValueError:
                continue
            if not (ip.is_loopback or ip.is_link_local) and str(ip) not in found:
                found.append(str(ip))
    return found[:MAX_ADDRESSES]


class Uplink:
    """Heartbeats to the registry and applies its resources; `state` is connected, unreachable or refused."""

    def __init__(self, gateway: GatewayAPI, settings: RegistrySettings) -> None:
        self.gateway = gateway
        self.settings = settings
        self.interval = settings.heartbeat_interval or 10.0
        self.state = "starting"
        self.reason = ""
        self.latency_ms: float | None = None
        self.resource_version = ""
        self._failed_version = ""
        self.messages_received = 0
        self.messages_unrouted = 0
        self.message_state = "starting"
        self.sampler = NodeSampler(gateway.data_dir, gateway)  # its rates cover the time between two heartbeats
        self.twins = TwinSync(gateway, gateway.data_dir / "registry" / "desired.json")
        self.workloads = WorkloadSync(gateway)
        self.figures = FiguresSync(gateway)
        self.upgrade = NodeUpgrade(gateway)
        self.routes = RouteSync(gateway)
        self.service_events = ServiceEventSync(gateway)
        from gateway.files.bucket import TokenBucket

        self.file_bucket = TokenBucket(None)  # both directions of file transfers draw from it (files.bandwidth)
        self._seen_messages: dict[str, None] = {}  # ids of the latest messages taken, oldest first
        # one heartbeat at a time, over HTTPS or the channel: what it carries is taken back when it fails
        self.beating = asyncio.Lock()
        self.channel = ChannelLink(self)
        self.failover: OfflineFailover | None = None  # the group's consensus store, when the node has one
        services = getattr(gateway, "services", None)
        if services is not None:  # service traffic to and from other nodes through the registry relay
            self.channel.handlers[SERVICE_STREAM] = services.accept_relayed

            async def relay(node: str) -> Stream:
                return await self.channel.open_stream(RELAY_STREAM, {"node": node})

            services.relay = relay

    async def run(self) -> None:
        from gateway.uplink.join import client_ssl_context

        context = client_ssl_context(self.gateway.data_dir)
        async with httpx.AsyncClient(base_url=self.settings.url, verify=context, timeout=TIMEOUT) as client:
            while True:
                await self.channel.polling.wait()  # the channel carries the heartbeats while it is up
                await self.beat(client)
                await self.channel.sleep_unless_up(self.interval)

    async def run_messages(self) -> None:
        """Long-poll the registry for messages, deliver them along the rest routes and acknowledge them."""
        from gateway.uplink.join import client_ssl_context

        context = client_ssl_context(self.gateway.data_dir)
        timeout = httpx.Timeout(TIMEOUT, read=MESSAGE_WAIT + TIMEOUT)
        async with httpx.AsyncClient(base_url=self.settings.url, verify=context, timeout=timeout) as client:
            while True:
                await self.channel.polling.wait()  # the channel pushes the messages while it is up
                try:
                    await self.poll_messages(client, MESSAGE_WAIT)
                except (httpx.HTTPError, msgspec.DecodeError, ConfigError) as exc:
                    self._set_message_state("unreachable", f"{type(exc).__name__}: {exc}")
                    await asyncio.sleep(self.interval)

    async def poll_messages(self, client: httpx.AsyncClient, wait: float) -> int:
        """One poll: deliver the pending messages (waiting up to `wait` s for one); how many were delivered."""
        response = await client.get("/api/v1/nodes/self/messages", params={"wait": str(wait)})
        if response.status_code != 200:
            self._set_message_state("refused", f"{response.status_code} {response.text.strip()[:200]}")
            await asyncio.sleep(self.interval)
            return 0
        self._set_message_state("connected", "polling")
        messages = decode_json(response.content, list[NodeMessage], what="the registry's messages")
        if not messages:
            return 0
        for message in messages:
            if not self.first_time(message.id):  # the channel brought it already
                continue
            if message.namespace == LOGS_NAMESPACE:  # a log, or a workload action, the registry asks of this node
                await answer_request(client, message.id, base64.b64decode(message.payload), message.path,
                                     self.gateway)
                continue
            self.deliver(message.namespace, message.path, base64.b64decode(message.payload))
        await self.gateway.flush()  # durable in the outboxes before the registry forgets them
        ack = await client.post("/api/v1/nodes/self/messages/ack",
                                content=msgspec.json.encode(AckRequest(ids=[m.id for m in messages])),
                                headers={"Content-Type": "application/json"})
        ack.raise_for_status()
        return len(messages)

    def _file_client(self, read: float = TIMEOUT) -> httpx.AsyncClient:
        from gateway.uplink.join import client_ssl_context

        return httpx.AsyncClient(base_url=self.settings.url, verify=client_ssl_context(self.gateway.data_dir),
                                 timeout=httpx.Timeout(TIMEOUT, read=read))

    async def run_files_in(self) -> None:
        """Files from the registry into the files area (gateway.uplink.files), over the channel while it is up."""
        from gateway.uplink.filechannel import UplinkTransport
        from gateway.uplink.files import FileSync, HttpsChunkTransport

        async with self._file_client(read=60.0) as client:
            transport = UplinkTransport(self.channel, HttpsChunkTransport(client), self.file_bucket)
            self.files_in = FileSync(self.gateway, transport, self.file_bucket)
            await self.files_in.run_incoming()

    async def run_files_out(self) -> None:
        """Files from the node's outbox to the registry (gateway.uplink.files), over the channel while it is up."""
        from gateway.uplink.filechannel import UplinkTransport
        from gateway.uplink.files import FileSync, HttpsChunkTransport

        async with self._file_client(read=60.0) as client:
            transport = UplinkTransport(self.channel, HttpsChunkTransport(client), self.file_bucket)
            self.files_out = FileSync(self.gateway, transport, self.file_bucket)
            await self.files_out.run_outgoing()

    async def run_file_folder(self) -> None:
        """The outbox folder into the file outbox."""
        from gateway.uplink.files import run_folder

        await run_folder(self.gateway)

    def first_time(self, message_id: str) -> bool:
        """Whether a message is new to this process (a message comes again when its acknowledgement was lost)."""
        if message_id in self._seen_messages:
            return False
        self._seen_messages[message_id] = None
        while len(self._seen_messages) > SEEN_MESSAGES:
            del self._seen_messages[next(iter(self._seen_messages))]
        return True

    def deliver(self, namespace: str, path: str, payload: bytes) -> list[str]:
        """Hand a message to the rest routes of `namespace` whose source path is `path`; the routes that took it."""
        taken = self.gateway.routes.from_rest(path, payload, namespace)
        self.messages_received += 1
        if not taken:
            self.messages_unrouted += 1
            log.warning("a registry message for %s/%s matched no rest route; dropped", namespace, path)
        return taken

    def _set_message_state(self, state: str, reason: str) -> None:
        if state != self.message_state:
            level = logging.INFO if state == "connected" else logging.WARNING
            log.log(level, "registry messages from %s: %s (%s)", self.settings.url, state, reason)
        self.message_state = state

    def heartbeat_body(self) -> dict[str, Any]:
        """The next heartbeat (node info, twins, workloads, upgrade, routes, service events), within the registry's
        MAX_HEARTBEAT."""
        body = {"resource_version": self.resource_version, "info": self.node_info(), **self.twins.outgoing(),
                **self.workloads.outgoing(), **self.upgrade.outgoing(), **self.routes.outgoing(),
                **self.service_events.outgoing(), **self.figures.outgoing(),
                **(self.failover.outgoing() if self.failover is not None else {})}
        content = msgspec.json.encode(body)  # msgspec, not json: no value can make the body invalid JSON
        if len(content) > MAX_HEARTBEAT:  # the budgets keep under it; never send what the registry refuses whole
            log.error("a heartbeat of %d bytes is over the registry's %d: its twins and workloads go later",
                      len(content), MAX_HEARTBEAT)
            self.twins.failed()
            self.workloads.failed()
            self.routes.failed()
            self.service_events.failed()
            later = ("twins", "twins_complete", "described", "workloads", "routes", "figures", "service_events")
            body = {key: value for key, value in body.items() if key not in later}
        return body

    def beat_failed(self) -> None:
        """The heartbeat did not get through: the twins, workloads and routes it carried go with the next one."""
        self.twins.failed()
        self.workloads.failed()
        self.routes.failed()
        self.service_events.failed()

    def beat_refused(self, reason: str) -> None:
        """The registry refused the heartbeat (over HTTPS or the channel): it goes again, with what it carried."""
        self.beat_failed()
        self._set_state("refused", reason)

    async def beat(self, client: httpx.AsyncClient) -> None:
        async with self.beating:
            await self._beat(client)

    async def _beat(self, client: httpx.AsyncClient) -> None:
        started = time.monotonic()
        content = msgspec.json.encode(self.heartbeat_body())
        try:
            response = await client.post("/api/v1/heartbeat", content=content,
                                         headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            self.beat_failed()
            if expired := expired_certificate(self.gateway.data_dir):
                self._set_state("refused", expired)
            else:
                self._set_state("unreachable", f"{type(exc).__name__}: {exc}")
            return
        if response.status_code != 200:
            self.beat_refused(f"{response.status_code} {response.text.strip()[:200]}")
            return
        try:
            answer = decode_json(response.content, HeartbeatResponse, what="the heartbeat answer")
        except ConfigError as exc:
            self.beat_failed()
            self._set_state("refused", f"unexpected answer: {exc}")
            return
        await self.beat_answered(client, answer, started)

    async def beat_answered(self, client: httpx.AsyncClient, answer: HeartbeatResponse, started: float) -> None:
        """Take the registry's answer to a heartbeat (over HTTPS or the channel)."""
        self.twins.delivered()
        self.workloads.delivered()
        self.routes.delivered()
        self.service_events.delivered()
        self.latency_ms = round((time.monotonic() - started) * 1000, 1)
        self._set_state("connected", f"as node {answer.node}")
        self.interval = answer.heartbeat_interval or self.interval
        self.channel.announced(answer.channel)
        if self.failover is not None:
            self.failover.plan_received(answer.failover)
        if answer.documents is not None and answer.resource_version != self.resource_version:
            await self.apply(answer.resource_version, answer.documents)
        if self.failover is not None:  # after the documents: a takeover the registry adopted is in them
            await self.failover.settle(answer.failover, started)
        if answer.desired:  # after the documents: a desired value may be for a device they just added
            await self.twins.apply_desired(answer.desired)
        if answer.upgrade is not None:
            await self.upgrade.start(client, answer.upgrade)

    async def apply(self, version: str, raw_documents: list[dict[str, Any]]) -> None:
        """Make the registry-owned resources exactly these; a version that does not fit is logged once."""
        try:
            if self.failover is not None:  # with the apps taken over in the group the registry has not adopted yet
                raw_documents = self.failover.merged(raw_documents)
            documents = [msgspec.convert(raw, AnyDocument, dec_hook=dec_hook) for raw in raw_documents]
            changed = await self.gateway.resources.replace_owned(documents, owner=REGISTRY, actor="registry")
        except (FieldgateError, msgspec.ValidationError) as exc:
            if version != self._failed_version:
                log.error("registry resources version %s do not fit this node; keeping the current ones: %s",
                          version, exc)
            self._failed_version = version
            return
        self.resource_version = version
        self.twins.complete = True  # devices may have gone: the next report names every one
        log.info("registry resources version %s applied (%s)", version, ", ".join(changed) or "none")

    def _set_state(self, state: str, reason: str) -> None:
        if state != self.state:
            level = logging.INFO if state == "connected" else logging.WARNING
            log.log(level, "registry %s is %s: %s", self.settings.url, state, reason)
        self.state, self.reason = state, reason

    def node_info(self) -> dict[str, Any]:
        status = self.gateway.status()
        metrics = self.sampler.sample()
        return {
            "version": __version__,
            "plugins": [info.name for info in list_plugins(self.gateway.pm)],
            "os": f"{platform.system()} {platform.release()}",
            "architecture": platform.machine(),
            "python": platform.python_version(),
            "addresses": interface_addresses(),
            "cpu_percent": metrics["cpu_percent"],
            "memory_percent": metrics["memory_percent"],
            "disk_percent": metrics["disk_percent"],
            "metrics": metrics,  # kept per minute by the registry
            "devices": status["devices"],
            "accelerators": node_accelerators(self.gateway.config.gateway.workloads),
            "uplink_latency_ms": self.latency_ms,
            "resource_version": self.resource_version,
            "messages_received": self.messages_received,
            "messages_unrouted": self.messages_unrouted,
            "channel": self.channel.state,
            **({"consensus": {"peer_url": consensus.peer_url, "client_url": consensus.client_url}}
               if (consensus := self.gateway.config.gateway.consensus) is not None else {}),
            "mesh": getattr(getattr(self.gateway, "services", None), "mesh_address", ""),  # direct service streams
            "services": services.report() if (services := getattr(self.gateway, "services", None)) else [],
            # the booted A/B system slot, on nodes that run the appliance image (what OS upgrade tasks look at)
            **({"system": system} if (system := system_state(self.gateway.data_dir)) is not None else {}),
        }

    def status(self) -> dict[str, Any]:
        """The uplink's part of the gateway's status: how the node talks to the registry now."""
        return {"registry": self.settings.url, "node": self.settings.node, "state": self.state, "reason": self.reason,
                "transport": "channel" if self.channel.up else "https-polling", "latency_ms": self.latency_ms,
                "resource_version": self.resource_version, "channel": self.channel.describe(),
                "messages": self.message_state}
