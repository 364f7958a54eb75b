"""The store's place in the layers: it imports nothing above it, and no SQL is written outside it (the registry
keeps its own store package)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STORE = REPO / "gateway" / "store"
SQL = re.compile(r"\b(SELECT|INSERT INTO|INSERT OR|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")
ALLOWED_BELOW = ("gateway.errors", "gateway.store")


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def sql_strings(path: Path) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value)]


def test_the_store_imports_nothing_above_it() -> None:
    above = {f"{path.relative_to(REPO)}: {module}" for path in STORE.glob("*.py") for module in imported_modules(path)
             if module.startswith("gateway") and not module.startswith(ALLOWED_BELOW)}
    assert not above, f"the store imports parts above it: {sorted(above)}"


def test_no_sql_outside_the_store_packages() -> None:
    owners = (REPO / "gateway" / "store", REPO / "gateway" / "registry")
    found = [f"{path.relative_to(REPO)}:{line}: {text[:60]!r}"
             for root in (REPO / "gateway", REPO / "plugins") for path in sorted(root.rglob("*.py"))
             if not path.is_relative_to(owners[0]) and not path.is_relative_to(owners[1])
             for line, text in sql_strings(path)]
    assert not found, "SQL outside the store packages:\n" + "\n".join(found)
