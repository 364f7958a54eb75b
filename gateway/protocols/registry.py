"""The protocols the loaded plugins serve, by name.

A plugin serves a protocol in one of two ways: its `register_protocols` hook returns the class (imported with the
plugin), or its distribution declares it as an entry point of the group `fieldgate.protocols`
(`bacnet-ip = "fieldgate_bacnet.protocol:BacnetIp"`), imported the first time a document asks for that protocol.
The second keeps what a configuration does not use out of the gateway's start-up: a gateway polling Modbus never
imports a BACnet stack."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator, Mapping

import pluggy

from gateway.errors import PluginError
from gateway.protocols.base import Protocol

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fieldgate.protocols"


class Protocols(Mapping[str, type[Protocol]]):
    """Protocol classes by name; declared ones are imported on first use. One that fails to import is logged
    once, recorded with the plugin manager's load failures and missing from then on (as a plugin that fails to
    load is), so a document naming it gets the usual "unknown protocol" error instead of a crash."""

    def __init__(self, loaded: dict[str, type[Protocol]], declared: dict[str, importlib.metadata.EntryPoint],
                 failures: dict[str, str] | None = None) -> None:
        self._loaded = loaded
        self._declared = declared
        self._failures = failures if failures is not None else {}

    def __getitem__(self, name: str) -> type[Protocol]:
        cls = self._loaded.get(name)
        if cls is not None:
            return cls
        entry_point = self._declared.get(name)
        if entry_point is None:
            raise KeyError(name)
        try:
            cls = entry_point.load()
            if not (isinstance(cls, type) and issubclass(cls, Protocol)):
                raise PluginError(f"{entry_point.value} is not a Protocol class")
            if name not in cls.names:
                raise PluginError(f"{entry_point.value} serves {', '.join(cls.names)}, not {name!r}")
        except Exception as exc:  # a broken plugin must not stop the gateway: its protocol is missing instead
            del self._declared[name]
            dist = entry_point.dist.name if entry_point.dist is not None else "?"
            self._failures[name] = f"{type(exc).__name__}: {exc}"
            log.error("protocol %s from %s failed to load: %s", name, dist, exc)
            raise KeyError(name) from exc
        self._loaded[name] = cls
        del self._declared[name]
        return cls

    def __iter__(self) -> Iterator[str]:
        return iter([*self._loaded, *self._declared])

    def __len__(self) -> int:
        return len(self._loaded) + len(self._declared)

    def __contains__(self, name: object) -> bool:
        return name in self._loaded or name in self._declared

    def loaded(self) -> tuple[str, ...]:
        """The names whose classes are imported so far."""
        return tuple(self._loaded)


def declared_protocols() -> dict[str, importlib.metadata.EntryPoint]:
    """The `fieldgate.protocols` entry points of the installed distributions, by protocol name."""
    declared: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        other = declared.get(entry_point.name)
        if other is not None and other.value != entry_point.value:
            raise PluginError(f"protocol {entry_point.name!r} is declared by both {other.value} and "
                              f"{entry_point.value}")
        declared[entry_point.name] = entry_point
    return declared


def _blocked(pm: pluggy.PluginManager, entry_point: importlib.metadata.EntryPoint) -> bool:
    """Whether the plugin of the protocol's distribution is blocked (its protocols go with it)."""
    dist = entry_point.dist
    if dist is None:
        return False
    return any(pm.is_blocked(other.name) for other in dist.entry_points if other.group == "fieldgate")


def protocol_registry(pm: pluggy.PluginManager, *, declared: bool = True) -> Protocols:
    """Protocol classes by the names they serve; two plugins serving one name is an error."""
    registry: dict[str, type[Protocol]] = {}
    for classes in pm.hook.register_protocols():
        for cls in classes:
            for name in cls.names:
                if name in registry and registry[name] is not cls:
                    raise PluginError(f"protocol {name!r} is served by both {registry[name]!r} and {cls!r}")
                registry[name] = cls
    lazy = declared_protocols() if declared and getattr(pm, "entry_points_loaded", True) else {}
    for name, entry_point in list(lazy.items()):
        if _blocked(pm, entry_point):
            del lazy[name]
        elif name in registry:
            raise PluginError(f"protocol {name!r} is served by both {registry[name]!r} and {entry_point.value}")
    return Protocols(registry, lazy, getattr(pm, "load_failures", None))
