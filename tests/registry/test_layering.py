"""The registry is the server side only: nothing outside its package imports it, it imports neither the node's runtime
nor its web package, and its SQL is in its store package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.conftest import REPO

GATEWAY = REPO / "gateway"
REGISTRY = GATEWAY / "registry"
# the node's parts the registry must not use; gateway.pipeline.values (value conversion) is shared
NODE_PARTS = ("gateway.runtime", "gateway.pipeline", "gateway.store", "gateway.eventbus", "gateway.sinks",
              "gateway.uplink", "gateway.web")
SHARED = ("gateway.pipeline.values",)
# the reference docs cover both halves: their generator builds the registry app to list its routes
MAY_IMPORT_THE_REGISTRY = (GATEWAY / "ops" / "docgen.py",)
SQL = re.compile(r"\b(SELECT|INSERT INTO|UPDATE [a-z_]+ SET|DELETE FROM|CREATE TABLE)\b")


def imports(path: Path) -> set[str]:
    """Every module a file imports, at its top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(package + ".") for package in packages)


def test_nothing_outside_the_registry_imports_it() -> None:
    sources = [*GATEWAY.rglob("*.py"), *(REPO / "plugins").rglob("*.py")]
    offenders = sorted(f"{path.relative_to(REPO)}: {name}" for path in sources
                       if REGISTRY not in path.parents and path not in MAY_IMPORT_THE_REGISTRY
                       for name in imports(path) if within(name, ("gateway.registry",)))
    assert offenders == []


def test_the_registry_imports_no_part_of_the_node() -> None:
    offenders = sorted(f"{path.relative_to(REPO)}: {name}" for path in REGISTRY.rglob("*.py")
                       for name in imports(path) if within(name, NODE_PARTS) and not within(name, SHARED))
    assert offenders == []


def test_the_registry_keeps_its_sql_in_its_store_package() -> None:
    offenders = sorted(f"{path.relative_to(REPO)}:{number}" for path in REGISTRY.rglob("*.py")
                       if REGISTRY / "store" not in path.parents
                       for number, line in enumerate(path.read_text().splitlines(), start=1) if SQL.search(line))
    assert offenders == []
