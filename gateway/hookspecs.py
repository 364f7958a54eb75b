"""Hook specifications: every extension point of fieldgate, for built-in features and plugins alike.

Each hook is documented in docs/plugin-hooks.md; tests/test_docs.py fails when one is missing there.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from gateway.api import GatewayAPI
    from gateway.commands import Command
    from gateway.protocols.base import Protocol
    from gateway.resources.endpoints import EndpointType
    from gateway.resources.loader import Config
    from gateway.resources.schema import Workload
    from gateway.sinks.base import Sink

hookspec = pluggy.HookspecMarker("fieldgate")
hookimpl = pluggy.HookimplMarker("fieldgate")


@hookspec
def register_protocols() -> Iterable[type[Protocol]]:
    """Return protocol classes; each serves the protocol names in its `names` attribute."""


@hookspec
def register_sinks() -> Iterable[type[Sink]]:
    """Return sink classes; each serves the endpoint type in its `name` attribute as a route target."""


@hookspec
def register_endpoint_types() -> Iterable[EndpointType]:
    """Return the endpoint types a plugin serves itself (not as route targets), each with its properties Struct."""


@hookspec
def register_runtimes() -> Iterable[type[Any]]:
    """Return runtime classes that run edge apps; each serves the runtime in its `name` attribute."""


@hookspec
def register_routes() -> Iterable[Any]:
    """Return Litestar route handlers or controllers to mount in the local web app (guarded like the rest)."""


@hookspec
def register_browsers() -> Iterable[Command]:
    """Return commands (gateway.commands.Command) that find devices of one protocol: `fieldgate browse <name>`."""


@hookspec
def register_commands() -> Iterable[Command]:
    """Return CLI commands (gateway.commands.Command) to add under `fieldgate <name>`."""


@hookspec(firstresult=True)
def workload_fence(gateway: GatewayAPI) -> Callable[[Workload], str | None] | None:
    """Return a fence for the node's workloads, asked before any of them starts: called with a Workload, it answers
    None (not fenced: it runs as placed), "" (fenced and allowed to run now) or why it may not run now."""


@hookspec
def startup(gateway: GatewayAPI) -> Awaitable[None] | None:
    """Called once the gateway has started, with its narrow API (gateway.api); may return an awaitable."""


@hookspec
def config_changed(gateway: GatewayAPI, old: Config, new: Config) -> Awaitable[None] | None:
    """Called after every change of the running configuration (API, registry, reload); may return an awaitable."""


@hookspec
def shutdown(gateway: GatewayAPI) -> Awaitable[None] | None:
    """Called when the gateway stops, before the store closes; may return an awaitable."""
