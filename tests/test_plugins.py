"""Plugins: built-ins registered like third-party ones; a separately installed distribution is found,
listed and used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.plugins import get_plugin_manager, list_plugins
from gateway.runtime import Gateway
from tests.conftest import FIELDGATE
from tests.test_runtime import wait_for

PLUGIN_MODULE = '''
from typing import Any, ClassVar
import msgspec
from gateway.hookspecs import hookimpl
from gateway.protocols.base import Protocol, ReadResult
from gateway.commands import Command

class Config(msgspec.Struct, forbid_unknown_fields=True):
    pass

class Visitor(msgspec.Struct, forbid_unknown_fields=True):
    answer: int

class EchoProtocol(Protocol):
    names: ClassVar[tuple[str, ...]] = ("echo",)
    config_type: ClassVar[type[msgspec.Struct]] = Config
    visitor_type: ClassVar[type[msgspec.Struct]] = Visitor

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return frozenset({"int"})

    async def open(self) -> None: ...
    async def read(self, plan: Any) -> ReadResult:
        return ReadResult({p.name: p.visitor.answer for p in plan})
    async def write(self, prop: Any, value: Any) -> None: ...
    async def close(self) -> None: ...

@hookimpl
def register_protocols():
    return [EchoProtocol]

@hookimpl
def register_commands():
    return [Command("echo", "say hello", lambda parser: None, lambda args: print("hello from echo") or 0)]
'''

CONFIG = """\
kind: DeviceModel
name: m
properties: [{name: answer, type: int}]
---
kind: Device
name: e1
model: m
protocol: {name: echo}
properties: [{name: answer, collect_interval: 50ms, visitor: {answer: 42}}]
"""


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip-installs a tiny distribution `fieldgate-echo` with a `fieldgate` entry point into its own site dir."""
    src = tmp_path_factory.mktemp("src")
    (src / "fieldgate_echo.py").write_text(PLUGIN_MODULE)
    (src / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "fieldgate-echo"
        version = "1.2.3"
        [project.entry-points.fieldgate]
        echo = "fieldgate_echo"
        [tool.setuptools]
        py-modules = ["fieldgate_echo"]
    """))
    site = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "--target", str(site), str(src)], check=True, timeout=120)
    return site


def env_with(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


def test_builtins_are_plugins() -> None:
    infos = {info.name: info for info in list_plugins(get_plugin_manager(load_entry_points=False))}
    assert infos["gateway.protocols.virtual"].hooks == ("register_protocols",)
    assert infos["gateway.cli_core"].distribution == "fieldgate"


def test_installed_plugin_is_listed(plugin_site: Path) -> None:
    result = subprocess.run([*FIELDGATE, "plugins", "--json"], capture_output=True, text=True,
                            env=env_with(plugin_site), timeout=30, check=True)
    plugins = {p["name"]: p for p in map(json.loads, result.stdout.splitlines())}
    assert plugins["echo"]["distribution"] == "fieldgate-echo"
    assert plugins["echo"]["version"] == "1.2.3"
    assert plugins["echo"]["hooks"] == ["register_commands", "register_protocols"]
    human = subprocess.run([*FIELDGATE, "plugins"], capture_output=True, text=True, env=env_with(plugin_site),
                           timeout=30, check=True).stdout
    assert "fieldgate-echo 1.2.3" in human
    command = subprocess.run([*FIELDGATE, "echo"], capture_output=True, text=True, env=env_with(plugin_site),
                             timeout=30)
    assert command.returncode == 0 and command.stdout == "hello from echo\n"


def test_installed_plugin_protocol_is_used(plugin_site: Path, tmp_path: Path) -> None:
    (tmp_path / "echo.yaml").write_text(CONFIG)
    result = subprocess.run([*FIELDGATE, "check", str(tmp_path / "echo.yaml")], capture_output=True, text=True,
                            env=env_with(plugin_site), timeout=30)
    assert result.returncode == 0, result.stderr
    without = subprocess.run([*FIELDGATE, "check", str(tmp_path / "echo.yaml")], capture_output=True, text=True,
                             timeout=30)
    assert without.returncode == 2 and "unknown protocol 'echo'" in without.stderr


async def test_installed_plugin_feeds_the_twin(plugin_site: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(plugin_site))
    (tmp_path / "echo.yaml").write_text(CONFIG)
    async with Gateway.from_path(tmp_path / "echo.yaml", tmp_path / "data") as gw:
        await wait_for(lambda: gw.api.twin("default/e1").properties["answer"].reported == 42)
    sys.modules.pop("fieldgate_echo", None)


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path, plugin_site: Path) -> None:
    broken = tmp_path / "broken-site"
    broken.mkdir()
    dist = broken / "fieldgate_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fieldgate-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[fieldgate]\nbroken = fieldgate_broken_missing\n")
    env = env_with(plugin_site)
    env["PYTHONPATH"] = f"{broken}{os.pathsep}{env['PYTHONPATH']}"
    result = subprocess.run([*FIELDGATE, "plugins"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 0
    assert "fieldgate-echo" in result.stdout  # the good one still loads
    assert "plugin broken from fieldgate-broken failed to load" in result.stderr


LAZY_MODULE = PLUGIN_MODULE.replace('("echo",)', '("lazyecho",)').split("@hookimpl")[0] + '''
print("fieldgate_lazyecho imported", file=__import__("sys").stderr)
'''


@pytest.fixture(scope="module")
def lazy_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A distribution declaring its protocol as a `fieldgate.protocols` entry point (and a broken one beside it),
    written as installed metadata: the class is imported only when a document uses the protocol."""
    site = tmp_path_factory.mktemp("lazy-site")
    (site / "fieldgate_lazyecho.py").write_text(LAZY_MODULE)
    dist = site / "fieldgate_lazyecho-0.2.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fieldgate-lazyecho\nVersion: 0.2\n")
    (dist / "entry_points.txt").write_text(
        "[fieldgate.protocols]\nlazyecho = fieldgate_lazyecho:EchoProtocol\n"
        "brokenecho = fieldgate_lazyecho_missing:EchoProtocol\n"
        "misnamed = fieldgate_lazyecho:EchoProtocol\n")
    return site


def test_declared_protocol_is_imported_only_when_used(lazy_site: Path, tmp_path: Path) -> None:
    env = env_with(lazy_site)
    probe = ("import sys; from gateway.plugins import get_plugin_manager; "
             "from gateway.protocols.registry import protocol_registry; "
             "p = protocol_registry(get_plugin_manager()); "
             "print('lazyecho' in p, 'fieldgate_lazyecho' in sys.modules, len(p) >= 3); "
             "p['lazyecho']; print('fieldgate_lazyecho' in sys.modules)")
    shown = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=60)
    assert shown.stdout.split() == ["True", "False", "True", "True"], shown.stderr
    (tmp_path / "lazy.yaml").write_text(CONFIG.replace("{name: echo}", "{name: lazyecho}"))
    checked = subprocess.run([*FIELDGATE, "check", str(tmp_path / "lazy.yaml")], capture_output=True, text=True,
                             env=env, timeout=30)
    assert checked.returncode == 0, checked.stderr
    assert "fieldgate_lazyecho imported" in checked.stderr
    (tmp_path / "echo-free.yaml").write_text(CONFIG.replace("{name: echo}", "{name: virtual}").replace(
        "visitor: {answer: 42}", "visitor: {generator: constant, value: 42}"))
    unused = subprocess.run([*FIELDGATE, "check", str(tmp_path / "echo-free.yaml")], capture_output=True,
                            text=True, env=env, timeout=30)
    assert "fieldgate_lazyecho imported" not in unused.stderr


@pytest.mark.parametrize("protocol, reason", [("brokenecho", "No module named 'fieldgate_lazyecho_missing'"),
                                              ("misnamed", "serves lazyecho, not 'misnamed'")])
def test_declared_protocol_that_fails_to_load_is_unknown_not_fatal(lazy_site: Path, tmp_path: Path,
                                                                   protocol: str, reason: str) -> None:
    (tmp_path / "broken.yaml").write_text(CONFIG.replace("{name: echo}", f"{{name: {protocol}}}"))
    result = subprocess.run([*FIELDGATE, "check", str(tmp_path / "broken.yaml")], capture_output=True, text=True,
                            env=env_with(lazy_site), timeout=30)
    assert result.returncode == 2
    assert f"protocol {protocol} from fieldgate-lazyecho failed to load" in result.stderr
    assert reason in result.stderr
    assert f"unknown protocol '{protocol}'" in result.stderr


def test_a_modbus_configuration_imports_no_other_protocol_stack(tmp_path: Path) -> None:
    """The installed plugins declare their protocols: `fieldgate run` for a Modbus configuration builds its
    command line and reads its documents without importing BACnet, OPC UA, S7 or DMI (gRPC) code, nor the
    registry or the importers, nor cryptography (15 MB of RSS that only a node's streams from other nodes need)."""
    (tmp_path / "gw.yaml").write_text(
        "kind: DeviceModel\nname: m\nproperties: [{name: p, type: int}]\n---\nkind: Device\nname: d\nmodel: m\n"
        "protocol: {name: modbus-tcp, config: {host: 127.0.0.1, port: 1502}}\n"
        "properties: [{name: p, visitor: {register: HoldingRegister, offset: 0, type: int16}}]\n")
    foreign = ("bacpypes3", "asyncua", "grpc", "snap7", "fieldgate_bacnet.protocol", "fieldgate_opcua.protocol",
               "fieldgate_s7.protocol", "fieldgate_dmi.protocol", "fieldgate_mqtt.protocol",
               "gateway.registry.cli", "gateway.importers.cli", "fieldgate_modbus.cli", "fieldgate_bacnet.browse",
               "cryptography")
    probe = ("import sys; from gateway.cli import build_parser; build_parser(['run']); "
             "from gateway.runtime import Gateway; "
             f"gw = Gateway.from_path({str(tmp_path / 'gw.yaml')!r}, {str(tmp_path / 'data')!r}); "
             "print(sorted(gw.protocols.loaded())); "
             f"print(','.join(m for m in {foreign!r} if m in sys.modules) or 'none')")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded, imported = result.stdout.splitlines()
    assert "modbus-tcp" in loaded and "bacnet-ip" not in loaded
    assert imported == "none"


def test_declared_protocols_are_listed_with_their_plugin() -> None:
    result = subprocess.run([*FIELDGATE, "plugins", "--json"], capture_output=True, text=True, timeout=30,
                            check=True)
    plugins = {p["name"]: p for p in map(json.loads, result.stdout.splitlines())}
    assert plugins["modbus"]["serves"]["register_protocols"] == ["modbus-rtu", "modbus-tcp"]
    assert plugins["bacnet"]["serves"]["register_protocols"] == ["bacnet-ip"]
    assert plugins["s7"]["serves"]["register_protocols"] == ["s7"]
    help_text = subprocess.run([*FIELDGATE, "--help"], capture_output=True, text=True, timeout=30).stdout
    assert "registry" in help_text and "import" in help_text and "sim" in help_text
    sim = subprocess.run([*FIELDGATE, "sim", "--help"], capture_output=True, text=True, timeout=30)
    assert sim.returncode == 0 and "modbus" in sim.stdout
