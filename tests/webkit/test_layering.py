"""The web kit serves both apps and depends on neither; the registry takes it, never the node's web package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

GATEWAY = Path(__file__).resolve().parents[2] / "gateway"


def imported_modules(package: Path) -> dict[str, set[str]]:
    """Every module each file of `package` imports, at the top or inside a function."""
    found: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        names = found.setdefault(str(path.relative_to(GATEWAY.parent)), set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def reaches(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize(("package", "forbidden"), [
    ("webkit", ("gateway.web", "gateway.registry", "gateway.runtime")),
    ("registry", ("gateway.web",)),
])
def test_imports_follow_the_layers(package: str, forbidden: tuple[str, ...]) -> None:
    wrong = sorted(f"{path} imports {module}" for path, modules in imported_modules(GATEWAY / package).items()
                   for module in modules if any(reaches(module, name) for name in forbidden))
    assert not wrong
