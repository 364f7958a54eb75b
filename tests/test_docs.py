"""The docs keep up with the code: every hook documented, generated references up to date."""

from __future__ import annotations

import inspect
import re

import pytest

from gateway import hookspecs
from gateway.cli import build_parser
from gateway.ops import docgen
from gateway.registry import docs as registry_docs
from gateway.workloads.model import Runtime
from tests.conftest import REPO

HOOKS = [name for name, fn in vars(hookspecs).items()
         if inspect.isfunction(fn) and hasattr(fn, "fieldgate_spec")]


def test_hooks_found() -> None:
    assert set(HOOKS) >= {"register_protocols", "register_sinks", "register_runtimes", "register_routes",
                          "register_commands", "startup", "shutdown"}


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_with_its_signature(hook: str) -> None:
    page = (REPO / "docs" / "plugin-hooks.md").read_text()
    assert f"## {hook}\n" in page, f"docs/plugin-hooks.md has no section for {hook}"
    signature = inspect.signature(getattr(hookspecs, hook))
    params = ", ".join(f"{name}: {p.annotation}" for name, p in signature.parameters.items())
    expected = f"def {hook}({params}) -> {signature.return_annotation}"
    assert expected in page, f"docs/plugin-hooks.md: {hook} should read `{expected}`"


@pytest.mark.parametrize("method", sorted(name for name, fn in vars(Runtime).items()
                                           if inspect.isfunction(fn) and not name.startswith("_")))
def test_every_runtime_method_is_documented(method: str) -> None:
    page = (REPO / "docs" / "plugin-hooks.md").read_text()
    section = page.split("## register_runtimes\n", 1)[1].split("\n## ", 1)[0]
    assert f"{method}(" in section, f"docs/plugin-hooks.md: register_runtimes does not mention Runtime.{method}()"


GENERATORS = {**{name: ("gateway.ops.docgen", fn) for name, fn in docgen.GENERATED.items()},
              **{name: ("gateway.registry.docs", fn) for name, fn in registry_docs.GENERATED.items()}}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generated_docs_are_current(name: str) -> None:
    committed = (REPO / "docs" / name).read_text()
    module, generate = GENERATORS[name]
    assert committed == generate(), f"docs/{name} is stale: run python -m {module}"


def test_readme_documents_every_command() -> None:
    readme = (REPO / "README.md").read_text()
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for command in commands:
        assert re.search(rf"fieldgate {command}\b", readme), f"README.md does not mention `fieldgate {command}`"


def test_every_gateway_api_member_is_documented() -> None:
    from gateway.api import GatewayAPI

    page = (REPO / "docs" / "plugin-hooks.md").read_text()
    section = page.split("## The gateway API\n", 1)[1].split("\n## ", 1)[0]
    members = [name for name in vars(GatewayAPI) if not name.startswith("_")]
    assert "set_desired" in members and "subscribe" in members
    for name in members:
        documented = f"`{name}(" in section or f"`{name}`" in section or re.search(rf"`{name}[(`]", section)
        assert documented, f"docs/plugin-hooks.md: the gateway API section does not mention GatewayAPI.{name}"
    for attribute in ("node_name", "data_dir", "resources", "workloads", "routes", "store"):
        assert f"`{attribute}`" in section
