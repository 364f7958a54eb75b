"""The fieldgate plugin: the `s7` protocol (Siemens S7 PLCs over ISO-on-TCP)."""

from __future__ import annotations

from collections.abc import Iterable

from fieldgate_s7.protocol import S7Protocol
from gateway.hookspecs import hookimpl
from gateway.protocols.base import Protocol


@hookimpl
def register_protocols() -> Iterable[type[Protocol]]:
    return [S7Protocol]
