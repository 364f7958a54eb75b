"""The plugin manager: built-in features and third-party plugins register through the same hooks."""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from gateway import __version__, hookspecs
from gateway.errors import PluginError

log = logging.getLogger(__name__)

# Built-in features, registered exactly like third-party plugins.
BUILTIN_PLUGINS = (
    "gateway.protocols.virtual",
    "gateway.sinks.builtin",
    "gateway.cli_core",
    "gateway.web.api.messages",
    "gateway.builtin_commands",
    "gateway.uplink.plugin", "gateway.uplink.cli",
    "gateway.ops.metrics", "gateway.ops.systemd",
    "gateway.workloads.process", "gateway.web.api.workloads", "gateway.web.api.services",
    "gateway.ops.upgrade", "gateway.ops.osupdate",
)


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    # what its register_* hooks serve, by hook: protocol, sink (endpoint type) and runtime names
    serves: dict[str, tuple[str, ...]] = field(default_factory=dict)


# The hooks that register named things, and how to read the names off what they return.
SERVING_HOOKS: dict[str, Callable[[Any], tuple[str, ...]]] = {
    "register_protocols": lambda item: tuple(getattr(item, "names", ())),
    "register_sinks": lambda item: (getattr(item, "name", "?"),),
    "register_endpoint_types": lambda item: (getattr(item, "name", "?"),),
    "register_runtimes": lambda item: (getattr(item, "name", "?"),),
}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager, remembering the distribution each entry-point plugin came from."""

    def __init__(self) -> None:
        super().__init__("fieldgate")
        self.distributions: dict[str, tuple[str, str]] = {}
        self.load_failures: dict[str, str] = {}
        self.entry_points_loaded = False  # the installed plugins too, not only the built-in ones


def get_plugin_manager(*, load_entry_points: bool = True) -> PluginManager:
    """A fresh plugin manager with the built-in plugins and, unless told otherwise, the installed ones."""
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for module_name in BUILTIN_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    if load_entry_points:
        load_entry_point_plugins(pm)
        pm.entry_points_loaded = True
    pm.check_pending()
    return pm


def load_entry_point_plugins(pm: PluginManager) -> None:
    """Register every `fieldgate` entry point; one that fails to import is logged and skipped, not fatal."""
    for dist in importlib.metadata.distributions():
        for entry_point in dist.entry_points:
            if entry_point.group != "fieldgate" or pm.get_plugin(entry_point.name) is not None:
                continue
            if pm.is_blocked(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
            except Exception as exc:  # a broken third-party plugin must not stop the gateway
                pm.load_failures[entry_point.name] = f"{type(exc).__name__}: {exc}"
                log.error("plugin %s from %s failed to load: %s", entry_point.name, dist.metadata["name"], exc)
                continue
            pm.register(plugin, name=entry_point.name)
            pm.distributions[entry_point.name] = (dist.metadata["name"], dist.version)


def list_plugins(pm: pluggy.PluginManager, *, serves: bool = False) -> list[PluginInfo]:
    """Every registered plugin with the distribution it came from (and with `serves`, what it registers)."""
    dists = pm.distributions if isinstance(pm, PluginManager) else {}
    infos = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        served = _served(pm, plugin) if serves else {}
        dist = dists.get(name)
        if serves and dist is not None:  # the protocols it declares as entry points, imported on first use
            declared = sorted(entry_point.name for entry_point in importlib.metadata.entry_points(
                group="fieldgate.protocols") if entry_point.dist is not None and entry_point.dist.name == dist[0])
            if declared:
                served["register_protocols"] = tuple(sorted({*served.get("register_protocols", ()), *declared}))
        if dist is not None:
            infos.append(PluginInfo(name, dist[0], dist[1], hooks, served))
        else:
            infos.append(PluginInfo(name, "fieldgate", __version__, hooks, served))
    return infos


def _served(pm: pluggy.PluginManager, plugin: Any) -> dict[str, tuple[str, ...]]:
    served: dict[str, tuple[str, ...]] = {}
    for caller in pm.get_hookcallers(plugin) or ():
        names_of = SERVING_HOOKS.get(caller.name)
        if names_of is None:
            continue
        for impl in caller.get_hookimpls():
            if impl.plugin is not plugin:
                continue
            try:
                function: Callable[[], Any] = impl.function
                items = list(function() or ())
            except Exception as exc:  # listing plugins must work even when one of them is broken
                log.warning("plugin %s: %s failed: %s", impl.plugin_name, caller.name, exc)
                continue
            served[caller.name] = tuple(sorted({name for item in items for name in names_of(item)}))
    return served


def require(condition: bool, message: str) -> None:
    if not condition:
        raise PluginError(message)
