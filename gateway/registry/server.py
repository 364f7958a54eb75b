"""Serving the registry app over TLS with uvicorn, the verified client certificate passed in the ASGI scope.

uvicorn does not put the peer certificate in the scope, so its h11 protocol is extended to add the ASGI TLS
extension (`scope["extensions"]["tls"]["client_cert_chain"]`, PEM) from the connection's SSL object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import ConfigError
from gateway.registry.app import create_app
from gateway.registry.auth import IDENTITY
from gateway.registry.ca import CertificateAuthority
from gateway.registry.cli import DEFAULT_REGISTRY_DIR
from gateway.registry.files import Retention
from gateway.registry.peers import split_address
from gateway.wire import CHANNEL_OFF, CHANNEL_PATH, MAX_CHANNEL_FRAME

log = logging.getLogger(__name__)
# asyncio reads a TLS connection's socket into a buffer of its own, zero-filled when the connection is made: 256 KiB
# by default, which was most of the registry's memory per connected node. The bytes read are copied out of it at once
# (into the connection's TLS object, before the loop runs anything else), so the connections of one process can share
# one buffer. A TLS record is at most 16 KiB: reads of that size still take a record at a time.
TLS_READ_BUFFER = 16 << 10


def shared_tls_read_buffer() -> None:
    """Make the TLS connections this process accepts from now on read their socket into one shared buffer of
    TLS_READ_BUFFER bytes (asyncio's SSLProtocol; left as it is when its shape is not the one known here)."""
    import asyncio.sslproto

    protocol = asyncio.sslproto.SSLProtocol
    if getattr(protocol, "_fieldgate_shared_buffer", False) or not all(
            hasattr(protocol, name) for name in ("max_size", "get_buffer", "buffer_updated")):
        return
    protocol.max_size = TLS_READ_BUFFER
    shared = bytearray(TLS_READ_BUFFER)
    view = memoryview(shared)
    original_init = protocol.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._ssl_buffer, self._ssl_buffer_view = shared, view

    protocol.__init__ = init  # type: ignore[method-assign]
    protocol._fieldgate_shared_buffer = True  # type: ignore[attr-defined]


class _WithPeerCertificate:
    """ASGI app wrapper adding one connection's client certificate to every scope."""

    def __init__(self, app: Any, cert_pem: str | None) -> None:
        self.app = app
        self.cert_pem = cert_pem
        self._identity: tuple[str, str] | None = None

    def identity(self) -> tuple[str, str]:
        """(common name, serial) of the certificate, read once for all the connection's requests."""
        if self._identity is None:
            from gateway.registry.ca import peer_identity

            self._identity = peer_identity(self.cert_pem or "")
        return self._identity

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            tls = {"client_cert_chain": [self.cert_pem] if self.cert_pem else [], "tls_version": None,
                   "cipher_suite": None, "server_cert": None, "client_cert_name": None, "client_cert_error": None,
                   IDENTITY: self.identity if self.cert_pem else None}
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), "tls": tls}}
        await self.app(scope, receive, send)


class PeerCertH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, exposing the verified client certificate as the ASGI TLS extension."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        self.app = _WithPeerCertificate(self.app, ssl.DER_cert_to_PEM_cert(der) if der else None)

    def handle_websocket_upgrade(self, event: Any) -> None:
        """As uvicorn's, but the WebSocket protocol runs the app with the connection's client certificate too."""
        self.connections.discard(self)
        output = [event.method, b" ", event.target, b" HTTP/1.1\r\n"]
        for name, value in self.headers:
            output += [name, b": ", value, b"\r\n"]
        output.append(b"\r\n")
        protocol: Any = self.ws_protocol_class(config=self.config, server_state=self.server_state,  # type: ignore[call-arg, misc]
                                               app_state=self.app_state)
        protocol.app = self.app
        protocol.connection_made(self.transport)
        self.transport.set_protocol(protocol)
        protocol.data_received(b"".join(output))


class _QuietServer(uvicorn.Server):
    """uvicorn's server without its own signal handling: serve() owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _shut_down(server: uvicorn.Server, app: Any, channel_server: uvicorn.Server | None) -> None:
    server.should_exit = True
    if channel_server is not None:
        channel_server.should_exit = True
    app.state.waiters.close()  # waiting message polls answer now instead of holding the graceful shutdown


def _host_port(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"--listen: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)


def browser_url(host: str, port: int) -> str:
    """The URL a browser opens: this machine's name when the registry listens on every address."""
    if host in ("", "0.0.0.0", "::"):
        host = socket.getfqdn()
    return f"https://[{host}]:{port}/" if ":" in host else f"https://{host}:{port}/"


def first_admin_hint(url: str, data_dir: Path) -> str:
    """What `registry serve` says while no user can log in to its pages."""
    data = f" --data-dir {data_dir}" if Path(data_dir) != Path(DEFAULT_REGISTRY_DIR) else ""
    return (f"No registry user yet. Add the first admin (type its password, then Enter):\n"
            f"  fieldgate registry user add admin --role admin --scope platform --password-stdin{data}\n"
            f"then open {url} in a browser and log in. The browser trusts the registry once it trusts its CA: "
            f"download {url}api/v1/ca and import it as a certificate authority (README: Trust the registry's CA).")


async def _has_users(data_dir: Path, db_url: str | None) -> bool:
    from gateway.registry import access
    from gateway.registry.store import RegistryStore

    async with RegistryStore(data_dir, db_url) as store:
        return bool(await access.users(store))


def _config(app: Any, host: str, port: int, ca: CertificateAuthority, cert_path: Path, key_path: Path,
            interval: float, *, lifespan: Literal["on", "off"]) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, http=PeerCertH11Protocol, ws="websockets-sansio",
                          ws_max_size=MAX_CHANNEL_FRAME, ssl_certfile=str(cert_path), ssl_keyfile=str(key_path),
                          ssl_ca_certs=str(ca.cert_path), ssl_cert_reqs=ssl.CERT_OPTIONAL, log_config=None,
                          access_log=False, lifespan=lifespan, timeout_graceful_shutdown=3,
                          # nodes keep their link open between heartbeats: a new TLS handshake per beat was the
                          # registry's p99 (1.7 s at 1,000 nodes) and most of its CPU
                          timeout_keep_alive=max(30, int(interval * 3)))


def channel_address(listen: str, channel_listen: str) -> tuple[str, tuple[str, int] | None]:
    """What nodes are told of the channel and the separate listener it needs, if any: `channel_listen` is "" (the
    registry's own listener), "off" or HOST:PORT."""
    if channel_listen == "":
        return CHANNEL_PATH, None
    if channel_listen == CHANNEL_OFF:
        return CHANNEL_OFF, None
    try:
        host, port = _host_port(channel_listen)
    except ConfigError:
        raise ConfigError(f"--channel-listen: expected HOST:PORT or off, got {channel_listen!r}") from None
    if (host, port) == _host_port(listen):
        return CHANNEL_PATH, None
    return f":{port}{CHANNEL_PATH}", (host, port)


async def serve(listen: str, data_dir: Path, *, interval: float, db_url: str | None = None,
                files_url: str | None = None, retention: Retention | None = None, channel_listen: str = "",
                peer_listen: str = "", peer_advertise: str = "") -> int:
    """Run the registry until SIGINT or SIGTERM."""
    host, port = _host_port(listen)
    if peer_listen:
        split_address(peer_listen, "--peer-listen")
        split_address(peer_advertise or peer_listen, "--peer-advertise")
    elif peer_advertise:
        raise ConfigError("--peer-advertise: it goes with --peer-listen")
    address, separate = channel_address(listen, channel_listen)
    shared_tls_read_buffer()
    ca = CertificateAuthority.load_or_create(data_dir)
    cert_path, key_path = ca.write_server_certificate(host)
    app = create_app(data_dir, interval=interval, db_url=db_url, files_url=files_url, retention=retention,
                     channel_address=address, peer_listen=peer_listen, peer_advertise=peer_advertise)
    check = getattr(app.state.files, "check", None)
    if check is not None:  # a wrong S3 endpoint, bucket or key is said now, not at the first upload
        await check()
    server = _QuietServer(_config(app, host, port, ca, cert_path, key_path, interval, lifespan="on"))
    # the channel's own listener serves the same app (its lifespan runs once, with the main listener)
    channel_server = _QuietServer(_config(app, separate[0], separate[1], ca, cert_path, key_path, interval,
                                          lifespan="off")) if separate else None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: _shut_down(server, app, channel_server))
    print(f"fieldgate registry on https://{listen}/ (CA fingerprint sha256 {ca.fingerprint})", flush=True)
    if separate:
        print(f"channel on wss://{channel_listen}{CHANNEL_PATH}", flush=True)
    if peer_listen:
        print(f"relay between replicas on {peer_listen}", flush=True)
    if not await _has_users(data_dir, db_url):
        print(first_admin_hint(browser_url(host, port), data_dir), flush=True)
    if channel_server is None:
        await server.serve()
    else:
        main = asyncio.create_task(server.serve())
        for _ in range(1200):  # until the store is open (a minute at most): then the channel may take nodes
            if server.started or main.done():
                break
            await asyncio.sleep(0.05)
        await channel_server.serve()
        if not channel_server.started:
            _shut_down(server, app, None)
            await main
            raise ConfigError(f"--channel-listen {channel_listen}: the channel could not listen there")
        await main
    if not server.started:
        raise ConfigError(f"--listen {listen}: the registry could not start there")
    return 0
