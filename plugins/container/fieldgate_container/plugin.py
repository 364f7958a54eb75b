"""The fieldgate plugin: registers the `container` runtime."""

from __future__ import annotations

from fieldgate_container.runtime import ContainerRuntime
from gateway.hookspecs import hookimpl
from gateway.workloads.model import Runtime


@hookimpl
def register_runtimes() -> list[type[Runtime]]:
    return [ContainerRuntime]
