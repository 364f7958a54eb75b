"""Addresses in settings: `HOST:PORT` listen addresses (IPv6 hosts in brackets)."""

from __future__ import annotations

from gateway.errors import ConfigError


def parse_listen(listen: str, setting: str = "http.listen") -> tuple[str, int]:
    """(host, port) of a `HOST:PORT` listen address; ConfigError naming `setting` when it is not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"{setting}: expected HOST:PORT, got {listen!r}")
    return host.strip("[]"), int(port)
