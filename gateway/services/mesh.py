"""Services on the node: an address and a proxy per Service port, the DNS responder that names them, and the
streams between nodes.

Addresses: every Service gets an address of `services.addresses` (a loopback network by default), kept while the
Service exists; its proxies listen there on the Service's ports, so services never clash on a port. The first
address of the network is the DNS responder's (gateway.services.dns).

Processes and containers on the host's network reach those addresses as they are. A container on a bridge network
(and a pod) has a network namespace of its own, whose 127.0.0.0/8 is its own `lo`: the runtime hands the namespace
to `attach_namespace` after creating it and before the app starts, and the mesh opens the same listeners inside it
(gateway.services.namespaces, with gateway.services.netns): every service address and port, and the DNS responder's
address at port 53 (but the app's own ports, which a listener of ours would keep it from listening on at all
addresses), served by the same proxies (picking, counters, affinity: there a client is the container's own
address). They follow the Services as the host's do and close when the runtime closes the attachment (the container
ended). Without the privilege to enter a namespace (CAP_SYS_ADMIN) the container runs without them, and one warning
per workload says so.

A connection (TCP) or a client's flow of datagrams (UDP) to a proxy goes to one endpoint:
- the ready instances: this node's own (from its workloads, live), and the other nodes' ready endpoints as the
  registry last sent them (kept on disk with the Service);
- `prefer: local` takes a ready local instance when there is one; else every ready instance counts;
- `session_affinity: ClientIP` keeps a client address on its endpoint while that stays ready (until the timeout
  after its last connection); else `round-robin` or `random`;
- an endpoint that failed is left out for a health interval (FAILED_FOR), and the next one is tried at once.

To an instance on another node the proxy opens a direct TLS connection to that node's advertised `mesh` address
(mutual TLS with the nodes' certificates from the fleet's CA) and, when it does not answer within
`connect_timeout`, a stream through the registry relay over the channel, with the same TLS inside it: the registry
copies ciphertext (TLS has no half-close: a client that shuts down its sending side ends a connection on these
paths). Either way the first line says which service port and instance (JSON), the other node checks its
own Service and instance, connects locally and answers `ok`; UDP datagrams then travel with a 2-byte length each.

Counters per service, port, endpoint and path (local, direct, relay): connections, bytes both ways, errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import random
import socket
import ssl
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.channel import Stream
from gateway.errors import ConfigError
from gateway.resources.addresses import parse_listen
from gateway.resources.loader import REGISTRY, Config
from gateway.resources.schema import Service, ServicePort, ServiceSettings
from gateway.resources.services import instance_ports, port_key, selects
from gateway.services.namespaces import NamespaceListeners
from gateway.services.netns import Namespace, entering_problem
from gateway.services.tls import PeerRefused, StreamSocket, accept_tls, contexts, peer_node

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
FAILED_FOR = 5.0  # seconds an endpoint that failed is left out
DIRECT_FAILED_FOR = 30.0  # seconds a node whose direct address did not answer is reached through the relay
HEADER_MAX = 2048
COPY_CHUNK = 1 << 16
DATAGRAM_MAX = 65507
AFFINITY_MAX = 10_000  # client addresses remembered per service
FLOWS_MAX = 1024  # UDP client flows per proxy
MAX_ATTEMPTS = 3
# service events kept until the uplink has sent them (a reload touching every Service makes two each; the uplink
# sends MAX_SERVICE_EVENTS a heartbeat): beyond, the oldest go
KEPT_EVENTS = 2000

Relay = Callable[[str], Awaitable[Stream]]


class NoEndpoint(Exception):
    """No ready instance (left) for a service port."""


class RelayRefused(Exception):
    """The registry refused a relayed stream; the message is its reason (a node gone, another workspace, …)."""


@dataclass
class Target:
    """One instance a connection may go to."""

    node: str
    instance: str
    port: int
    address: str = ""  # the node's direct address, for another node's instance
    local: bool = True

    @property
    def key(self) -> str:
        return f"{self.node}/{self.instance}"


@dataclass
class Counters:
    connections: int = 0
    active: int = 0
    bytes_in: int = 0  # from the client to the instance
    bytes_out: int = 0  # from the instance to the client
    errors: int = 0
    last_error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"connections": self.connections, "active": self.active, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "errors": self.errors, "last_error": self.last_error}


@dataclass
class ServiceState:
    service: Service
    address: str
    servers: list[Any] = field(default_factory=list)  # asyncio servers and datagram transports
    next: dict[str, int] = field(default_factory=dict)  # round-robin position per port
    affinity: dict[str, tuple[str, float]] = field(default_factory=dict)  # client address → (target key, until)
    problems: list[str] = field(default_factory=list)


class ServiceMesh:
    """The node's services (see the module's doc); `relay` is set by the uplink while a channel can carry streams."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.relay: Relay | None = None
        self.services: dict[tuple[str, str], ServiceState] = {}
        self.counters: dict[tuple[str, str, str, str, str], Counters] = {}  # (ns, name, port, target, path)
        self.failed: dict[str, float] = {}  # target key → until
        self.direct_failed: dict[str, float] = {}  # node → until
        self.dns: Any = None
        self._dns_warned = False  # a DNS responder that could not listen was said once
        self.mesh_server: asyncio.Server | None = None
        self.mesh_address = ""
        self.events: list[dict[str, Any]] = []
        self._namespace_problem: str | None = None  # probed at the first container with a namespace of its own
        self.event_seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._settings = ServiceSettings()
        self._tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None
        self._last_endpoints: dict[tuple[str, str], tuple[tuple[str, bool], ...]] = {}
        self.namespaces: set[NamespaceListeners] = set()  # containers' network namespaces the services are in
        self.namespace_warned: set[str] = set()  # workloads whose namespace could not be entered, said once

    # --- lifecycle ----------------------------------------------------------------------------------------------

    @property
    def settings(self) -> ServiceSettings:
        return self._settings

    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self._settings.addresses, strict=False)

    def dns_address(self) -> str:
        return str(self.network().network_address + 1)

    async def start(self, config: Config) -> None:
        self._settings = config.gateway.services
        self._tls = contexts(self.gateway.data_dir)
        await self._start_mesh_server()
        await self.reconcile(config)

    async def _ensure_dns(self) -> None:
        """The DNS responder runs once the node has a Service: a node without any opens no DNS port. One that cannot
        listen is tried again at the next change of the Services, and said once."""
        if self.dns is not None or not self._settings.dns_port:
            return
        from gateway.services.dns import DnsResponder

        dns = DnsResponder(self)
        try:
            await dns.start(self.dns_address(), self._settings.dns_port)
        except OSError as exc:
            if not self._dns_warned:
                log.warning("services: no DNS responder on %s:%d: %s", self.dns_address(), self._settings.dns_port,
                            exc)
            self._dns_warned = True
            return
        self.dns = dns

    async def _start_mesh_server(self) -> None:
        listen = self._settings.mesh_listen
        if listen == "none":
            return
        if self._tls is None:
            log.warning("services: mesh_listen %s needs the node's certificate (join a registry first); other nodes "
                        "reach this node's instances through the relay", listen)
            return
        host, port = parse_listen(listen, "services.mesh_listen")
        self.mesh_server = await asyncio.start_server(self._direct_connection, host or None, port,
                                                      ssl=self._tls[1], ssl_handshake_timeout=10.0)
        bound = self.mesh_server.sockets[0].getsockname()[1]
        self.mesh_address = self._settings.advertise or f"{self._advertised_host(host)}:{bound}"
        log.info("services: direct streams from other nodes on %s (advertised as %s)", listen, self.mesh_address)

    @staticmethod
    def _advertised_host(host: str) -> str:
        if host not in ("", "0.0.0.0", "::"):
            return host
        import psutil

        for addresses in psutil.net_if_addrs().values():
            for address in addresses:
                ip = ipaddress.ip_address(address.address.split("%", 1)[0]) if address.family in (
                    socket.AF_INET, socket.AF_INET6) else None
                if ip is not None and not (ip.is_loopback or ip.is_link_local):
                    return f"[{ip}]" if ip.version == 6 else str(ip)
        return "127.0.0.1"

    async def stop(self) -> None:
        for attached in list(self.namespaces):
            attached.close()
        for state in self.services.values():
            self._close_servers(state)
        self.services.clear()
        if self.mesh_server is not None:
            self.mesh_server.close()
            self.mesh_server = None
        if self.dns is not None:
            self.dns.stop()
            self.dns = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    @staticmethod
    def _close_servers(state: ServiceState) -> None:
        for server in state.servers:
            server.close()
        state.servers.clear()

    async def reconcile(self, config: Config) -> None:
        """Bring the proxies in step with the Services: new ones listen, gone ones close, changed ports re-listen;
        a Service whose ports did not change keeps its proxies (and its clients' connections)."""
        if config.gateway.services != self._settings:
            await self._apply_settings(config.gateway.services)
        wanted = config.services
        if wanted:
            await self._ensure_dns()
        for key in list(self.services):
            if key not in wanted:
                self._close_servers(self.services.pop(key))
                self._event(key, "removed", "")
        for key, service in sorted(wanted.items()):
            state = self.services.get(key)
            if state is not None and state.service.ports == service.ports:
                state.service = service
            else:
                if state is not None:
                    self._close_servers(state)
                state = ServiceState(service, state.address if state else self._allocate(key))
                self.services[key] = state
                await self._listen(state)
                self._event(key, "listening", f"{state.address} " + ", ".join(
                    f"{p.port}/{p.protocol}" for p in service.ports))
            endpoints = tuple(sorted((f"{e.node}/{e.instance}", e.ready) for e in service.endpoints))
            before = self._last_endpoints.get(key)
            if before != endpoints:
                self._last_endpoints[key] = endpoints
                for endpoint, ok in endpoints:  # the registry saw it ready (again): worth a new try
                    if ok:
                        self.failed.pop(endpoint, None)
                count = sum(1 for _, ok in endpoints if ok)
                self._event(key, "endpoints", f"{count} of {len(endpoints)} fleet endpoints ready"
                            + _endpoint_changes(dict(before or ()), dict(endpoints)))
        for attached in list(self.namespaces):
            try:
                await attached.sync()
            except OSError as exc:
                attached.refuse(f"{type(exc).__name__}: {exc}")

    async def _apply_settings(self, settings: ServiceSettings) -> None:
        """Changed `services` settings, without a restart: what a changed setting concerns listens anew (the proxies
        at their new addresses, the DNS responder, the listener for other nodes), the rest keeps running. Open
        connections stay on the sockets they came in by; apps keep the `<SERVICE>_SERVICE_HOST` they started with."""
        old, self._settings = self._settings, settings
        if settings.addresses != old.addresses:
            log.info("services: addresses %s → %s: the proxies move", old.addresses, settings.addresses)
            for state in self.services.values():
                self._close_servers(state)
                state.address = ""
            for key, state in sorted(self.services.items()):
                state.address = self._allocate(key)
                await self._listen(state)
                self._event(key, "moved", f"to {state.address}")
        if self.dns is not None and (settings.addresses, settings.dns_port) != (old.addresses, old.dns_port):
            log.info("services: the DNS responder moves to %s:%d", self.dns_address(), settings.dns_port)
            self.dns.stop()
            self.dns = None
        self._dns_warned = False
        if (settings.mesh_listen, settings.advertise) != (old.mesh_listen, old.advertise):
            if self.mesh_server is not None:
                self.mesh_server.close()
                self.mesh_server = None
            self.mesh_address = ""
            log.info("services: mesh_listen %s → %s", old.mesh_listen, settings.mesh_listen)
            try:
                await self._start_mesh_server()
            except (OSError, ConfigError) as exc:
                log.error("services: no direct streams from other nodes on %s: %s", settings.mesh_listen, exc)
        if self.services:
            await self._ensure_dns()

    def _allocate(self, key: tuple[str, str]) -> str:
        network = self.network()
        size = network.num_addresses - 3  # neither the network, the DNS responder's nor the broadcast address
        taken = {state.address for state in self.services.values()}
        start = zlib.crc32(f"{key[0]}/{key[1]}".encode()) % size
        for step in range(size):
            address = str(network.network_address + 2 + (start + step) % size)
            if address not in taken:
                return address
        raise RuntimeError(f"services.addresses {network}: no free address left")

    async def _listen(self, state: ServiceState) -> None:
        state.problems = []
        loop = asyncio.get_running_loop()
        for port in state.service.ports:
            try:
                if port.protocol == "TCP":
                    server = await asyncio.start_server(self._tcp_handler(state, port), state.address, port.port)
                    state.servers.append(server)
                else:
                    transport, _ = await loop.create_datagram_endpoint(
                        self._udp_factory(state, port), local_addr=(state.address, port.port))
                    state.servers.append(transport)
            except OSError as exc:
                state.problems.append(f"port {port.port}/{port.protocol}: {exc}")
                log.warning("service %s/%s: cannot listen on %s:%d/%s: %s", state.service.namespace,
                            state.service.name, state.address, port.port, port.protocol, exc)

    def _tcp_handler(self, state: ServiceState, port: ServicePort, client: str = ""
                     ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._held(self._tcp_client(state, port, reader, writer, client))

        return handle

    async def _held(self, coroutine: Awaitable[None]) -> None:
        """Run a connection's coroutine with its task held by the mesh (asyncio's servers do not hold them, and a
        task nothing holds may be collected while it waits), so that stop() ends it too."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await coroutine
        finally:
            if task is not None:
                self._tasks.discard(task)

    def _udp_factory(self, state: ServiceState, port: ServicePort, client: str = "") -> Callable[[], _UdpProxy]:
        return lambda: _UdpProxy(self, state, port, client)

    # --- inside containers' network namespaces ----------------------------------------------------------------

    def namespace_problem(self) -> str:
        if self._namespace_problem is None:
            self._namespace_problem = entering_problem()
            if self._namespace_problem:
                log.warning("services: containers with a network of their own run without the node's services and "
                            "their DNS names (they keep the engine's DNS): the gateway cannot enter their network "
                            "namespaces: %s", self._namespace_problem)
        return self._namespace_problem

    async def attach_namespace(self, pid: int, owner: str, client: str = "",
                               reserved: frozenset[tuple[int, str]] = frozenset()) -> NamespaceListeners:
        """Open the services in the network namespace of `pid` (a container's, or its pod's) before its app starts;
        `owner` (the workload) names it in the log, `client` (the container's address) is its client address for
        ClientIP affinity, `reserved` the app's own (port, protocol): a listener of ours on one of them would keep the
        app from listening on all addresses there. The listeners follow the Services until `close()`; one whose
        namespace cannot be entered has none and its `problem` says why."""
        attached = NamespaceListeners(self, owner, client, reserved)
        try:
            namespace = Namespace.of(pid)
        except OSError as exc:
            attached.refuse(f"cannot open the network namespace of pid {pid}: {exc.strerror or exc}")
            return attached
        if namespace.is_own():  # the host's network: the host's listeners serve it already
            namespace.close()
            return attached
        attached.namespace = namespace
        attached.client = client or f"netns:{namespace.inode}"
        self.namespaces.add(attached)
        try:
            await attached.sync()
        except OSError as exc:
            attached.refuse(str(exc) if isinstance(exc, PermissionError) else f"{type(exc).__name__}: {exc}")
        except BaseException:  # cancelled (the start gave up) or a fault: nothing may keep the namespace open
            attached.close()
            raise
        return attached

    async def serve_inside(self, state: ServiceState | None, port: ServicePort | None, sock: socket.socket,
                            client: str) -> Any:
        """The server (TCP) or transport (UDP) of one socket opened in a namespace: the DNS responder's when
        `state` is None, else the proxy of that service port."""
        if state is None or port is None:
            if self.dns is None:  # the responder stopped meanwhile (a reload turned it off)
                raise OSError(errno.ENOTCONN, "the DNS responder is not running")
            return await self.dns.serve(sock)
        if port.protocol == "TCP":
            return await asyncio.start_server(self._tcp_handler(state, port, client), sock=sock)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            self._udp_factory(state, port, client), sock=sock)
        return transport

    def _event(self, key: tuple[str, str], event: str, detail: str) -> None:
        """Keep an event of a service; its `seq` grows while the gateway runs (the uplink sends each once)."""
        self.event_seq += 1
        self.events.append({"seq": self.event_seq, "ts": time.time(), "service": f"{key[0]}/{key[1]}",
                            "event": event, "detail": detail})
        del self.events[:-KEPT_EVENTS]
        log.info("service %s/%s: %s %s", key[0], key[1], event, detail)

    # --- what apps see --------------------------------------------------------------------------------------------

    def address_of(self, namespace: str, name: str) -> str | None:
        state = self.services.get((namespace, name))
        return state.address if state is not None else None

    def resolve(self, name: str) -> str | None:
        """The address of `<service>.<namespace>.svc`, `<service>.<namespace>` or a bare `<service>` (in the node's
        namespace, else the one namespace that has it)."""
        found = self.lookup(name)
        return found[0] if found is not None else None

    def lookup(self, name: str) -> tuple[str, Service] | None:
        """(address, Service) of a service name as `resolve` reads it."""
        labels = name.lower().rstrip(".").split(".")
        state: ServiceState | None = None
        if (len(labels) == 3 and labels[2] == "svc") or len(labels) == 2:
            state = self.services.get((labels[1], labels[0]))
        elif len(labels) == 1:
            state = self.services.get((self.gateway.config.gateway.namespace, labels[0]))
            if state is None:
                found = [s for (_, service), s in self.services.items() if service == labels[0]]
                state = found[0] if len(found) == 1 else None
        return (state.address, state.service) if state is not None else None

    def environment(self, namespace: str) -> dict[str, str]:
        """`<NAME>_SERVICE_HOST`, `<NAME>_SERVICE_PORT` and `<NAME>_SERVICE_PORT_<PORT>` of the namespace's
        Services, as Kubernetes gives them, and FIELDGATE_DNS (HOST:PORT of the DNS responder) when it runs."""
        env: dict[str, str] = {}
        if self.dns is not None:  # where service names resolve (a container on the host's network gets it as --dns)
            env["FIELDGATE_DNS"] = f"{self.dns_address()}:{self._settings.dns_port}"
        for (ns, name), state in sorted(self.services.items()):
            if ns != namespace:
                continue
            prefix = name.upper().replace("-", "_")
            env[f"{prefix}_SERVICE_HOST"] = state.address
            env[f"{prefix}_SERVICE_PORT"] = str(state.service.ports[0].port)
            for port in state.service.ports:
                if port.name:
                    env[f"{prefix}_SERVICE_PORT_{port.name.upper().replace('-', '_')}"] = str(port.port)
        return env

    # --- choosing an endpoint ---------------------------------------------------------------------------------

    def local_targets(self, service: Service, port: ServicePort) -> list[Target]:
        """This node's ready instances behind a service port, live from its workloads."""
        targets = []
        workloads = self.gateway.config.workloads
        manager = getattr(self.gateway, "workloads", None)
        if manager is None:
            return []
        for runner in list(manager.runners.values()):
            workload = runner.target if runner.target is not None else None
            if workload is None or (workload.namespace, workload.name) not in workloads:
                continue
            if not selects(service, workload.namespace, workload.name, workload.labels,
                           workload.labels.get("batch", "")):
                continue
            for instance in list(runner.instances.values()):
                if not instance.ready:
                    continue
                found = instance_ports(service, workload, instance.ports).get(port_key(port))
                if found is not None:
                    targets.append(Target(self.gateway.node_name, instance.id, found))
        return targets

    def remote_targets(self, service: Service, port: ServicePort) -> list[Target]:
        """The other nodes' ready instances, from the endpoints the registry computed (a Service from a file or the
        local API has its own instances only: endpoints written there are ignored)."""
        if self.gateway.resources.resource_owner("Service", service.namespace, service.name) != REGISTRY:
            return []
        key = port_key(port)
        return [Target(e.node, e.instance, e.ports[key], e.address, local=False) for e in service.endpoints
                if e.ready and e.node != self.gateway.node_name and key in e.ports]

    def candidates(self, state: ServiceState, port: ServicePort, *, resting: bool = False) -> list[Target]:
        """The ready targets, without those resting after a failure (with them when `resting`)."""
        now = time.monotonic()
        local = [t for t in self.local_targets(state.service, port) if resting or self.failed.get(t.key, 0) <= now]
        if state.service.prefer == "local" and local:
            return local
        remote = [t for t in self.remote_targets(state.service, port)
                  if resting or self.failed.get(t.key, 0) <= now]
        return sorted(local + remote, key=lambda t: t.key)

    def pick(self, state: ServiceState, port: ServicePort, client: str, tried: set[str]) -> Target:
        options = [t for t in self.candidates(state, port) if t.key not in tried]
        if not options:  # every ready one failed a moment ago: one of them may work again (better than none)
            options = [t for t in self.candidates(state, port, resting=True) if t.key not in tried]
        if not options:
            raise NoEndpoint(f"service {state.service.namespace}/{state.service.name} port {port_key(port)}: no "
                             "ready instance")
        now = time.monotonic()
        service = state.service
        if service.session_affinity == "ClientIP":
            pinned = state.affinity.get(client)
            if pinned is not None and pinned[1] > now:
                chosen = next((t for t in options if t.key == pinned[0]), None)
                if chosen is not None:
                    state.affinity[client] = (chosen.key, now + float(service.session_affinity_timeout))
                    return chosen
        if service.load_balancing == "random":
            chosen = random.choice(options)
        else:
            position = state.next.get(port_key(port), 0)
            state.next[port_key(port)] = position + 1
            chosen = options[position % len(options)]
        if service.session_affinity == "ClientIP":
            if len(state.affinity) >= AFFINITY_MAX:
                state.affinity = {k: v for k, v in state.affinity.items() if v[1] > now}
                while len(state.affinity) >= AFFINITY_MAX:
                    del state.affinity[next(iter(state.affinity))]
            state.affinity[client] = (chosen.key, now + float(service.session_affinity_timeout))
        return chosen

    def count(self, state: ServiceState, port: ServicePort, target: Target, path: str) -> Counters:
        key = (state.service.namespace, state.service.name, port_key(port), target.key, path)
        counters = self.counters.get(key)
        if counters is None:
            counters = self.counters[key] = Counters()
        return counters

    # --- opening a connection to an endpoint --------------------------------------------------------------------

    async def open(self, state: ServiceState, port: ServicePort, target: Target
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str, Callable[[], Awaitable[None]]]:
        """(reader, writer, path, cleanup) of a connection to a target, local, direct or relayed."""
        if target.local:
            if port.protocol == "UDP":
                raise RuntimeError("a local UDP instance is not a stream")
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), 5.0)
            return reader, writer, "local", _nothing
        if self._tls is None:
            raise PeerRefused("this node has no certificate of the fleet (it has not joined a registry)")
        header = json.dumps({"service": f"{state.service.namespace}/{state.service.name}",
                             "port": port_key(port), "instance": target.instance}).encode() + b"\n"
        # the direct address first, unless it failed a moment ago (DIRECT_FAILED_FOR); then the relay; and when
        # there is no relay, or it fails without the registry refusing, the resting direct address after all
        resting = bool(target.address) and self.direct_failed.get(target.node, 0) > time.monotonic()
        relay_failure: Exception | None = None
        if target.address and not resting:
            direct = await self._open_direct(target, header)
            if direct is not None:
                return *direct, "direct", _nothing
        if self.relay is not None:
            try:
                reader, writer, cleanup = await self._open_relayed(target, header)
                return reader, writer, "relay", cleanup
            except RelayRefused:
                raise
            except Exception as exc:
                if not resting:
                    raise
                relay_failure = exc
        if resting:
            direct = await self._open_direct(target, header)
            if direct is not None:
                return *direct, "direct", _nothing
        if relay_failure is not None:
            raise relay_failure
        raise NoEndpoint(f"node {target.node}: no direct address answers and the registry relay is not up")

    async def _open_direct(self, target: Target, header: bytes
                           ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A direct TLS stream to the target's node, handshaken; None when its address does not answer (the node
        is then reached through the relay for DIRECT_FAILED_FOR seconds)."""
        assert self._tls is not None
        host, _, number = target.address.rpartition(":")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                host.strip("[]"), int(number), ssl=self._tls[0]), float(self._settings.connect_timeout))
        except (OSError, TimeoutError, ValueError, ssl.SSLError) as exc:
            self.direct_failed[target.node] = time.monotonic() + DIRECT_FAILED_FOR
            log.info("services: node %s does not answer at %s (%s); using the relay", target.node,
                     target.address, exc or type(exc).__name__)
            return None
        self.direct_failed.pop(target.node, None)
        try:
            peer_node(writer.get_extra_info("ssl_object"), target.node)
            await _handshake(reader, writer, header)
        except BaseException:
            writer.close()
            raise
        return reader, writer

    async def _open_relayed(self, target: Target, header: bytes
                            ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Callable[[], Awaitable[None]]]:
        """A stream to the target's node through the registry relay, with the fleet's TLS inside it."""
        assert self._tls is not None and self.relay is not None
        stream = await self.relay(target.node)
        bridge = await StreamSocket(stream).start()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                sock=bridge.sock, ssl=self._tls[0], server_hostname=target.node), 10.0)
            bridge.writer = writer
            peer_node(writer.get_extra_info("ssl_object"), target.node)
            await _handshake(reader, writer, header)
        except Exception as exc:
            refused = stream.error  # the registry's reason when it refused the stream (before close() sets one)
            await bridge.close()
            if refused is not None:
                raise RelayRefused(refused[:300]) from exc
            raise
        except BaseException:
            await bridge.close()
            raise
        return reader, writer, bridge.close

    # --- the proxies --------------------------------------------------------------------------------------------

    async def _tcp_client(self, state: ServiceState, port: ServicePort, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter, client: str = "") -> None:
        client = client or str((writer.get_extra_info("peername") or ("",))[0])
        tried: set[str] = set()
        try:
            for _ in range(MAX_ATTEMPTS):
                try:
                    target = self.pick(state, port, client, tried)
                except NoEndpoint as exc:
                    log.info("%s", exc)
                    return
                tried.add(target.key)
                try:
                    up_reader, up_writer, path, cleanup = await self.open(state, port, target)
                except Exception as exc:  # the next endpoint is tried; this one rests a while
                    counters = self.count(state, port, target, "local" if target.local else "remote")
                    counters.errors += 1
                    counters.last_error = f"{type(exc).__name__}: {exc}"[:300]
                    self.failed[target.key] = time.monotonic() + FAILED_FOR
                    continue
                counters = self.count(state, port, target, path)
                counters.connections += 1
                counters.active += 1
                try:
                    await _splice(reader, writer, up_reader, up_writer, counters)
                finally:
                    counters.active -= 1
                    await cleanup()
                return
        finally:
            writer.close()

    async def _direct_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._held(self._direct(reader, writer))

    async def _direct(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            peer = peer_node(writer.get_extra_info("ssl_object"))
        except PeerRefused as exc:
            log.warning("services: direct stream from %s refused: %s", writer.get_extra_info("peername"), exc)
            writer.close()
            return
        await self.serve_peer(peer, reader, writer)

    async def accept_relayed(self, stream: Stream) -> None:
        """A stream the registry relays from another node (the uplink's handler of `service` streams)."""
        if self._tls is None:
            await stream.close("this node has no certificate of the fleet")
            return
        expected = stream.meta.get("from")
        bridge = await StreamSocket(stream).start()
        try:
            reader, writer = await asyncio.wait_for(accept_tls(bridge.sock, self._tls[1]), 10.0)
            bridge.writer = writer
            try:
                peer = peer_node(writer.get_extra_info("ssl_object"), str(expected))
            except PeerRefused as exc:
                log.warning("services: relayed stream refused: %s", exc)
                writer.close()
                return
            await self.serve_peer(peer, reader, writer)
        finally:
            await bridge.close()

    async def serve_peer(self, peer: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Another node's connection to an instance here: header, check, connect locally, `ok`, copy."""
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), 10.0)
            request = json.loads(line[:HEADER_MAX])
            namespace, _, name = str(request["service"]).partition("/")
            state = self.services.get((namespace, name))
            if state is None:
                raise LookupError(f"no service {namespace}/{name} on node {self.gateway.node_name}")
            port = next((p for p in state.service.ports if port_key(p) == request["port"]), None)
            if port is None:
                raise LookupError(f"service {namespace}/{name} has no port {request['port']!r}")
            # the instance named, or (the caller's endpoints are older than a restart here) another ready one
            ready = self.local_targets(state.service, port)
            target = next((t for t in ready if t.instance == request["instance"]), ready[0] if ready else None)
            if target is None:
                raise LookupError(f"no ready instance of service {namespace}/{name} on node "
                                  f"{self.gateway.node_name}")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError, KeyError,
                TypeError, LookupError) as exc:
            with contextlib.suppress(ConnectionError):
                writer.write(f"error {exc}"[:500].encode() + b"\n")
                await writer.drain()
            writer.close()
            return
        counters = self.count(state, port, Target(peer, "from-node", target.port), "served")
        try:
            if port.protocol == "UDP":
                await self._serve_udp(target, reader, writer, counters)
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", target.port), 5.0)
            except (OSError, TimeoutError) as exc:
                counters.errors += 1
                writer.write(f"error instance {target.instance}: {exc}"[:500].encode() + b"\n")
                return
            writer.write(b"ok\n")
            counters.connections += 1
            await _splice(reader, writer, up_reader, up_writer, counters)
        finally:
            writer.close()

    async def _serve_udp(self, target: Target, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         counters: Counters) -> None:
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Collect(replies),
                                                           remote_addr=("127.0.0.1", target.port))
        writer.write(b"ok\n")
        counters.connections += 1

        async def back() -> None:
            while True:
                datagram = await replies.get()
                writer.write(struct.pack("!H", len(datagram)) + datagram)
                counters.bytes_out += len(datagram)
                await writer.drain()

        task = asyncio.create_task(back())
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                datagram = await reader.readexactly(size)
                counters.bytes_in += size
                transport.sendto(datagram)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            task.cancel()
            transport.close()

    # --- what the node shows ------------------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        result = []
        for (namespace, name), state in sorted(self.services.items()):
            service = state.service
            counters = [{"port": port, "endpoint": target, "path": path, **c.as_dict()}
                        for (ns, n, port, target, path), c in sorted(self.counters.items())
                        if (ns, n) == (namespace, name)]
            owned = self.gateway.resources.resource_owner("Service", namespace, name) == REGISTRY
            endpoints = [{"node": e.node, "instance": e.instance, "address": e.address, "ready": e.ready,
                          "ports": e.ports, "local": False} for e in (service.endpoints if owned else [])
                         if e.node != self.gateway.node_name]
            endpoints += [{"node": t.node, "instance": t.instance, "address": "", "ready": True,
                           "ports": {port_key(p): t.port}, "local": True}
                          for p in service.ports for t in self.local_targets(service, p)]
            result.append({"namespace": namespace, "name": name, "address": state.address,
                           "dns": f"{name}.{namespace}.svc",
                           "ports": [{"name": p.name, "port": p.port, "target_port": p.target_port,
                                      "protocol": p.protocol} for p in service.ports],
                           "session_affinity": service.session_affinity, "load_balancing": service.load_balancing,
                           "prefer": service.prefer, "problems": state.problems, "endpoints": endpoints,
                           "counters": counters})
        return result

    def report(self, limit: int = 200) -> list[list[Any]]:
        """The counters for the registry (with the heartbeat's node info): [service, port, endpoint, path,
        connections, bytes to, bytes from, errors] of those that saw a connection or an error, at most `limit`."""
        return [[f"{ns}/{name}", port, target, path, c.connections, c.bytes_in, c.bytes_out, c.errors]
                for (ns, name, port, target, path), c in sorted(self.counters.items())
                if c.connections or c.errors][:limit]

    def status(self) -> dict[str, Any]:
        return {"services": len(self.services), "dns": (f"{self.dns_address()}:{self._settings.dns_port}"
                                                        if self.dns is not None else None),
                "mesh": self.mesh_address or None, "relay": self.relay is not None,
                "container_namespaces": len(self.namespaces)}

    def view(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next((s for s in self.describe() if (s["namespace"], s["name"]) == (namespace, name)), None)


def _endpoint_changes(before: dict[str, bool], after: dict[str, bool], most: int = 10) -> str:
    """`: a/x ready, b/y not ready, c/z gone` — the endpoints whose readiness changed (the first `most`)."""
    changes = [f"{key} {'ready' if ok else 'not ready'}" for key, ok in sorted(after.items()) if before.get(key) != ok]
    changes += [f"{key} gone" for key in sorted(before) if key not in after]
    if not changes:
        return ""
    more = f" and {len(changes) - most} more" if len(changes) > most else ""
    return ": " + ", ".join(changes[:most]) + more


async def _nothing() -> None:
    return None


async def _handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, header: bytes) -> None:
    writer.write(header)
    await writer.drain()
    answer = await asyncio.wait_for(reader.readuntil(b"\n"), 10.0)
    if answer != b"ok\n":
        raise ConnectionError(answer[:500].decode(errors="replace").strip())


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, add: Callable[[int], None]) -> None:
    try:
        while chunk := await reader.read(COPY_CHUNK):
            add(len(chunk))
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:  # TLS has no half-close: the end of one direction ends the connection
            writer.close()
    except (ConnectionError, ssl.SSLError, OSError):
        writer.close()


async def _splice(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter,
                  up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter, counters: Counters) -> None:
    def add_in(n: int) -> None:
        counters.bytes_in += n

    def add_out(n: int) -> None:
        counters.bytes_out += n

    try:
        await asyncio.gather(_pipe(client_reader, up_writer, add_in), _pipe(up_reader, client_writer, add_out))
    finally:
        up_writer.close()


class _Collect(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(data)


class _Flow:
    """One UDP client's datagrams to its endpoint."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)
        self.task: asyncio.Task[None] | None = None


class _UdpProxy(asyncio.DatagramProtocol):
    """A service's UDP port: a flow per client address, to one endpoint, ended after `udp_idle`; `client` is the
    client address for affinity when all of them are one (a container's namespace), else each flow's own."""

    def __init__(self, mesh: ServiceMesh, state: ServiceState, port: ServicePort, client: str = "") -> None:
        self.mesh, self.state, self.port, self.client = mesh, state, port, client
        self.flows: dict[tuple[str, int], _Flow] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        key = (str(addr[0]), int(addr[1]))
        flow = self.flows.get(key)
        if flow is None:
            if len(self.flows) >= FLOWS_MAX:
                return
            flow = self.flows[key] = _Flow()
            flow.task = asyncio.ensure_future(self._run(key, flow))
        flow.last = time.monotonic()
        with contextlib.suppress(asyncio.QueueFull):
            flow.queue.put_nowait(data)

    def connection_lost(self, exc: Exception | None) -> None:
        for flow in self.flows.values():
            if flow.task is not None:
                flow.task.cancel()
        self.flows.clear()

    async def _run(self, key: tuple[str, int], flow: _Flow) -> None:
        try:
            await self._serve(key, flow)
        except Exception as exc:
            log.info("service %s/%s UDP flow of %s ended: %s", self.state.service.namespace,
                     self.state.service.name, key[0], exc)
        finally:
            self.flows.pop(key, None)

    def _reply(self, key: tuple[str, int], data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, key)

    async def _serve(self, key: tuple[str, int], flow: _Flow) -> None:
        mesh, state, port = self.mesh, self.state, self.port
        idle = float(mesh.settings.udp_idle)
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS):
            target = mesh.pick(state, port, self.client or key[0], tried)
            tried.add(target.key)
            try:
                if target.local:
                    await self._local(key, flow, target, idle)
                else:
                    await self._remote(key, flow, target, idle)
                return
            except (OSError, ConnectionError, TimeoutError, PeerRefused, RelayRefused, NoEndpoint,
                    ssl.SSLError) as exc:
                counters = mesh.count(state, port, target, "local" if target.local else "remote")
                counters.errors += 1
                counters.last_error = f"{type(exc).__name__}: {exc}"[:300]
                mesh.failed[target.key] = time.monotonic() + FAILED_FOR

    async def _next(self, flow: _Flow, idle: float) -> bytes | None:
        while True:
            try:
                return await asyncio.wait_for(flow.queue.get(), timeout=max(0.1, flow.last + idle - time.monotonic()))
            except TimeoutError:
                if time.monotonic() - flow.last >= idle:
                    return None

    async def _local(self, key: tuple[str, int], flow: _Flow, target: Target, idle: float) -> None:
        loop = asyncio.get_running_loop()
        counters = self.mesh.count(self.state, self.port, target, "local")
        replies: asyncio.Queue[bytes] = asyncio.Queue(maxsize=256)
        transport, _ = await loop.create_datagram_endpoint(lambda: _Collect(replies),
                                                           remote_addr=("127.0.0.1", target.port))
        counters.connections += 1

        async def back() -> None:
            while True:
                data = await replies.get()
                counters.bytes_out += len(data)
                flow.last = time.monotonic()
                self._reply(key, data)

        task = asyncio.create_task(back())
        try:
            while (data := await self._next(flow, idle)) is not None:
                counters.bytes_in += len(data)
                transport.sendto(data)
        finally:
            task.cancel()
            transport.close()

    async def _remote(self, key: tuple[str, int], flow: _Flow, target: Target, idle: float) -> None:
        reader, writer, path, cleanup = await self.mesh.open(self.state, self.port, target)
        counters = self.mesh.count(self.state, self.port, target, path)
        counters.connections += 1

        async def back() -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    data = await reader.readexactly(size)
                    counters.bytes_out += size
                    flow.last = time.monotonic()
                    self._reply(key, data)

        task = asyncio.create_task(back())
        try:
            while (data := await self._next(flow, idle)) is not None:
                counters.bytes_in += len(data)
                writer.write(struct.pack("!H", len(data)) + data[:DATAGRAM_MAX])
                await writer.drain()
        finally:
            task.cancel()
            writer.close()
            await cleanup()

