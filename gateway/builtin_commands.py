"""Built-in commands whose code only they need, registered by module path: `fieldgate run` does not import the
registry, the importers or the benchmarks to build its command line."""

from __future__ import annotations

from gateway.commands import Command
from gateway.hookspecs import hookimpl


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("import", "convert KubeEdge or Kubernetes manifests or a CSV inventory into fieldgate documents",
                "gateway.importers.cli:configure", "gateway.importers.cli:run"),
        Command("registry", "the thin cloud registry: serve, join-token, token, user, workspace, group, apply, "
                            "nodes, audit",
                "gateway.registry.cli:configure", "gateway.registry.cli:run"),
        Command("bench", "measure the codec, the router or the pipeline", "gateway.ops.bench:configure",
                "gateway.ops.bench:run"),
    ]
