"""The layers stay apart: who may import whom, where SQL may be written, and that every hook is called.

Read from the source with `ast`, so an import inside a function or under TYPE_CHECKING counts like any other.
Each rule names the offending module and line, so a failure says what to move.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import hookspecs
from tests.conftest import REPO

GATEWAY = REPO / "gateway"
PLUGIN_PACKAGES = sorted(path for path in (REPO / "plugins").glob("*/fieldgate_*") if path.is_dir())
SQL = re.compile(r"\b(SELECT|INSERT INTO|INSERT OR \w+ INTO|UPDATE \w+ SET|DELETE FROM|CREATE TABLE)\b")
# What a plugin may not import: the runtime and the parts behind the gateway API (docs/plugin-hooks.md).
CORE_INTERNALS = (
    "gateway.runtime", "gateway.store", "gateway.pipeline.bus", "gateway.pipeline.supervisor",
    "gateway.pipeline.devices", "gateway.pipeline.poller", "gateway.pipeline.routes", "gateway.pipeline.reconfigure",
    "gateway.sinks.manager", "gateway.eventbus", "gateway.uplink", "gateway.registry", "gateway.web.app",
    "gateway.web.server", "gateway.web.pages", "gateway.web.api",
)
# What the registry (the server side) may not import: the node's runtime and its web app.
NODE_SIDE = (
    "gateway.runtime", "gateway.api", "gateway.store", "gateway.pipeline.bus", "gateway.pipeline.supervisor",
    "gateway.pipeline.devices", "gateway.pipeline.poller", "gateway.pipeline.routes", "gateway.pipeline.reconfigure",
    "gateway.pipeline.twin", "gateway.sinks", "gateway.eventbus", "gateway.uplink", "gateway.web",
    "gateway.workloads.supervisor",
)
# The store and the web kit sit below the parts that use them.
STORE_MAY_IMPORT = ("gateway.errors", "gateway.store")
WEBKIT_MAY_NOT_IMPORT = ("gateway.web", "gateway.registry", "gateway.runtime", "gateway.api", "gateway.uplink")
# The hot paths and the schemas below everything: they import only each other, the error tree, the nesting limit of
# outside documents and the protocol contract that binds devices.
FOUNDATION = {"gateway.codec", "gateway.router", "gateway.native", "gateway.resources"}
FOUNDATION_MAY_IMPORT = ("gateway.codec", "gateway.router", "gateway.native", "gateway.errors", "gateway._native",
                         "gateway.resources", "gateway.decoding", "gateway.protocols.base")


def module_name(path: Path) -> str:
    relative = path.relative_to(path.parents[len(path.relative_to(REPO).parts) - 1])
    if relative.parts[0] == "plugins":
        relative = Path(*relative.parts[2:])
    parts = relative.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.py") if "tests" not in path.relative_to(root).parts)


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) of every import in a file, `from a import b` counted as a.b too (b may be a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def under(module: str, prefixes: tuple[str, ...] | set[str]) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in files:
        for line, module in imports(path):
            if under(module, forbidden):
                found.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    return sorted(set(found))


def test_the_module_names_are_read_right() -> None:
    assert module_name(GATEWAY / "pipeline" / "poller.py") == "gateway.pipeline.poller"
    assert module_name(GATEWAY / "store" / "__init__.py") == "gateway.store"
    plugin = REPO / "plugins" / "modbus" / "fieldgate_modbus" / "link.py"
    assert module_name(plugin) == "fieldgate_modbus.link"
    assert ("gateway.pipeline.twin" in {m for _, m in imports(GATEWAY / "pipeline" / "poller.py")})


@pytest.mark.parametrize("package", PLUGIN_PACKAGES, ids=lambda path: path.name)
def test_plugins_use_the_gateway_api_not_core_internals(package: Path) -> None:
    assert not violations(sources(package), CORE_INTERNALS)


def test_nothing_outside_the_registry_imports_it() -> None:
    outside = [path for path in sources(GATEWAY) if "registry" not in path.relative_to(GATEWAY).parts]
    outside += [path for package in PLUGIN_PACKAGES for path in sources(package)]
    assert not violations(outside, ("gateway.registry",))


def test_the_registry_imports_neither_the_node_runtime_nor_the_node_web_app() -> None:
    assert not violations(sources(GATEWAY / "registry"), NODE_SIDE)


def test_the_store_imports_nothing_above_it() -> None:
    found = [f"{path.relative_to(REPO)}:{line} imports {module}" for path in sources(GATEWAY / "store")
             for line, module in imports(path)
             if module.startswith("gateway.") and not under(module, STORE_MAY_IMPORT)]
    assert not found


def test_the_web_kit_serves_both_apps_and_depends_on_neither() -> None:
    assert not violations(sources(GATEWAY / "webkit"), WEBKIT_MAY_NOT_IMPORT)


def test_the_hot_paths_and_the_schemas_import_nothing_above_them() -> None:
    files = [path for path in sources(GATEWAY) if under(module_name(path), FOUNDATION)]
    assert files
    found = [f"{path.relative_to(REPO)}:{line} imports {module}" for path in files
             for line, module in imports(path)
             if module.startswith("gateway") and not under(module, FOUNDATION_MAY_IMPORT)
             and module != "gateway"]
    assert not found


def sql_strings(path: Path) -> Iterator[tuple[int, str]]:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
            yield node.lineno, node.value


def test_sql_is_written_only_in_the_two_store_packages() -> None:
    stores = (GATEWAY / "store", GATEWAY / "registry" / "store")
    files = [path for path in sources(GATEWAY) if not any(store in path.parents for store in stores)]
    files += [path for package in PLUGIN_PACKAGES for path in sources(package)]
    found = [f"{path.relative_to(REPO)}:{line}: {text[:60]!r}" for path in files for line, text in sql_strings(path)]
    assert not found


def test_every_hookspec_is_called_by_the_core() -> None:
    code = "\n".join(path.read_text() for path in sources(GATEWAY) if path.name != "hookspecs.py")
    specs = [name for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, "fieldgate_spec")]
    assert "register_sinks" in specs
    uncalled = [name for name in specs
                if not re.search(rf"hook\.{name}\(|_call_hook\(\s*[\"']{name}[\"']", code)]
    assert not uncalled, f"hookspecs nobody calls: {uncalled}"


def test_plugin_test_modules_have_names_of_their_own() -> None:
    """pytest imports the plugins' test modules by their file name (their folders are no packages): two plugins with
    a test_link.py stop the whole run at collection."""
    names: dict[str, list[str]] = {}
    for path in sorted((REPO / "plugins").glob("*/tests/**/*.py")):
        if path.name != "conftest.py" and "build" not in path.parts:
            names.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert not {name: paths for name, paths in names.items() if len(paths) > 1}
