"""The protocols the loaded plugins serve, by name."""

from __future__ import annotations

import pluggy

from gateway.errors import PluginError
from gateway.protocols.base import Protocol


def protocol_registry(pm: pluggy.PluginManager) -> dict[str, type[Protocol]]:
    """Protocol classes by the names they serve; two plugins serving one name is an error."""
    registry: dict[str, type[Protocol]] = {}
    for classes in pm.hook.register_protocols():
        for cls in classes:
            for name in cls.names:
                if name in registry and registry[name] is not cls:
                    raise PluginError(f"protocol {name!r} is served by both {registry[name]!r} and {cls!r}")
                registry[name] = cls
    return registry
