"""The local web app's listening socket, bound before the gateway starts (and before the web layer is imported)."""

from __future__ import annotations

import socket

from gateway.errors import ConfigError
from gateway.resources.addresses import parse_listen


def bind(listen: str) -> socket.socket:
    """The listening socket for `http.listen`; a taken port is a clear error (uvicorn would exit the process)."""
    host, port = parse_listen(listen)
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    reuse_port=False)
    except OSError as exc:
        raise ConfigError(f"http.listen {listen}: cannot listen there: {exc.strerror or exc}") from None
    # create_server's socket has protocol 0, so asyncio would not set TCP_NODELAY on accepted connections:
    # without it every response on a kept-alive connection waits ~40 ms for the delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
