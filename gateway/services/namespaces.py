"""The node's services inside one container's (or pod's) network namespace (see gateway.services.mesh): a listener
on every service address and port, and the DNS responder's address at port 53, kept in step with the Services
until the container ends."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from gateway.resources.schema import ServicePort
from gateway.services.netns import Listen, Namespace

if TYPE_CHECKING:
    from gateway.services.mesh import ServiceMesh, ServiceState

log = logging.getLogger(__name__)
DNS_INSIDE = 53  # the responder's port in a container's namespace (resolv.conf has no port)


class NamespaceListeners:
    """The node's services inside one container's (or pod's) network namespace: a listener on every service address
    and port and the DNS responder's address at port 53, in step with the Services (`sync`) until `close()`."""

    def __init__(self, mesh: ServiceMesh, owner: str, client: str,
                 reserved: frozenset[tuple[int, str]] = frozenset()) -> None:
        self.mesh = mesh
        self.owner = owner
        self.client = client
        self.reserved = reserved  # the app's own ports there: a service on one is left out of this namespace
        self.namespace: Namespace | None = None
        # (namespace, service, port, protocol) → (the service's state, None for the DNS responder; where it listens;
        # server/transport)
        self.listeners: dict[tuple[str, str, int, str], tuple[ServiceState | None, Listen, Any]] = {}
        # the DNS responder's address in the namespace: the container's resolv.conf names the one it started with
        self.dns_host: str | None = None
        self.problem = ""  # why the namespace has none of the services
        self.problems: list[str] = []  # listeners that could not be opened
        self.closed = False
        self._lock = asyncio.Lock()
        self._left_out: set[str] = set()  # services on the app's own ports, said once

    def wanted(self) -> dict[tuple[str, str, int, str], tuple[ServiceState | None, ServicePort | None, Listen]]:
        mesh = self.mesh
        wanted: dict[tuple[str, str, int, str], tuple[ServiceState | None, ServicePort | None, Listen]] = {}
        for (namespace, name), state in sorted(mesh.services.items()):
            for port in state.service.ports:
                if (port.port, port.protocol) in self.reserved:
                    if f"{namespace}/{name}" not in self._left_out:
                        self._left_out.add(f"{namespace}/{name}")
                        log.info("services: %s listens on port %d/%s itself: service %s/%s is not reachable on it "
                                 "from there", self.owner, port.port, port.protocol, namespace, name)
                    continue
                wanted[(namespace, name, port.port, port.protocol)] = (
                    state, port, Listen(state.address, port.port, port.protocol))
        if mesh.dns is not None:
            if self.dns_host is None:
                self.dns_host = mesh.dns_address()
            for protocol in ("UDP", "TCP"):  # TCP for answers a UDP one cannot hold (truncated)
                if (DNS_INSIDE, protocol) not in self.reserved:
                    wanted[("", "", DNS_INSIDE, protocol)] = (None, None, Listen(self.dns_host, DNS_INSIDE, protocol))
        return wanted

    async def sync(self) -> None:
        """Close the listeners of removed (or changed) service ports, open those of new ones. OSError (a
        PermissionError without the privilege) when the namespace cannot be entered."""
        async with self._lock:
            if self.closed or self.namespace is None:
                return
            wanted = self.wanted()
            for key, (state, listen, server) in list(self.listeners.items()):
                # gone, or changed: another Service of the name, or another address (services.addresses reloaded)
                if key not in wanted or wanted[key][0] is not state or wanted[key][2] != listen:
                    server.close()
                    del self.listeners[key]
            missing = [(key, item) for key, item in wanted.items() if key not in self.listeners]
            opened = await self.namespace.open([listen for _, (_, _, listen) in missing])
            problems = []
            taken = 0  # sockets handed to a server (or closed): whatever goes wrong, the others are closed below
            try:
                for (key, (state, port, listen)), sock in zip(missing, opened, strict=True):
                    taken += 1
                    if self.closed:
                        if not isinstance(sock, OSError):
                            sock.close()
                        continue
                    try:
                        if isinstance(sock, OSError):
                            raise sock
                        server = await self.mesh.serve_inside(state, port, sock, self.client)
                        self.listeners[key] = (state, listen, server)
                    except OSError as exc:
                        if not isinstance(sock, OSError):
                            sock.close()
                        problems.append(f"{listen.host}:{listen.port}/{listen.protocol}: {exc.strerror or exc}")
                    except BaseException:
                        if not isinstance(sock, OSError):
                            sock.close()
                        raise
            finally:
                for sock in opened[taken:]:
                    if not isinstance(sock, OSError):
                        sock.close()
            if self.closed:  # closed while these were opening
                for _, _, server in self.listeners.values():
                    server.close()
                self.listeners.clear()
            for problem in problems:
                if problem not in self.problems:
                    log.warning("services in the network namespace of %s: cannot listen on %s", self.owner, problem)
            self.problems = problems

    def refuse(self, reason: str) -> None:
        """Give up on this namespace (the container runs without the services); said once per workload."""
        self.close()
        self.problem = reason
        if self.owner not in self.mesh.namespace_warned:
            self.mesh.namespace_warned.add(self.owner)
            log.warning("services: %s runs without the node's services and their DNS names: %s", self.owner, reason)

    def close(self) -> None:
        """Close every listener and let the namespace go (the container ended, or the gateway stops)."""
        self.closed = True
        self.mesh.namespaces.discard(self)
        for _, _, server in self.listeners.values():
            server.close()
        self.listeners.clear()
        if self.namespace is not None:
            self.namespace.close()
            self.namespace = None
