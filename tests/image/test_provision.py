"""image/provision.py, the appliance's first-boot provisioning, run here against temporary directories."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from argon2 import PasswordHasher

from gateway.web.app import create_app
from tests.conftest import REPO

PROVISION = REPO / "image" / "provision.py"
PASSWORD = "provisioned-pass-1"
NO_USER = "No user exists yet"


def good_file() -> dict[str, Any]:
    example = yaml.safe_load((REPO / "image" / "provision.example.yaml").read_text())
    example["admin"]["password_hash"] = PasswordHasher().hash(PASSWORD)
    return dict(example)


def provision(tmp_path: Path, content: Any) -> tuple[subprocess.CompletedProcess[str], Path, Path, Path]:
    boot, config, data = tmp_path / "boot", tmp_path / "etc", tmp_path / "data"
    boot.mkdir(exist_ok=True)
    config.mkdir(exist_ok=True)
    (config / "gateway.yaml").write_text((REPO / "image" / "gateway.yaml").read_text())
    file = boot / "fieldgate-provision.yaml"
    file.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    result = subprocess.run([sys.executable, str(PROVISION), "--file", str(file), "--config-dir", str(config),
                             "--data-dir", str(data)], capture_output=True, text=True, timeout=120)
    return result, boot, config, data


def test_the_example_file_with_a_hash_is_applied(tmp_path: Path) -> None:
    result, boot, config, data = provision(tmp_path, good_file())
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in boot.iterdir()) == ["fieldgate-provision.yaml.applied"]
    assert sorted(p.name for p in config.iterdir()) == ["provisioned.yaml"]  # the default config is replaced
    kinds = [doc["kind"] for doc in yaml.safe_load_all((config / "provisioned.yaml").read_text())]
    assert kinds == ["Gateway", "DeviceModel", "Device"]
    assert (data / "fieldgate.db").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("admin: [unclosed", "not a readable YAML file"),
    ({"admin": {"password_hash": "hunter22"}, "documents": [{"kind": "Gateway", "name": "g"}]},
     "$.admin.password_hash: expected an argon2 hash"),
    ({"documents": [{"kind": "Gateway", "name": "g"}], "wifi": "on"}, "unknown field `wifi`"),
    ({"documents": []}, "$.documents: a Gateway document is required"),
    ({"documents": [{"kind": "Gateway", "name": "g"}],
      "registry": {"url": "https://reg.example:8443", "token": "a.b.c", "name": "Line 1/GW"}},
     "$.registry.name 'Line 1/GW': expected 1 to 63 lowercase letters"),
    ({"documents": [{"kind": "Gateway", "name": "g"},
                     {"kind": "Device", "name": "d", "model": "nope", "protocol": {"name": "virtual"}}]},
     "$.documents: document 2 (Device d): $.model: no DeviceModel default/nope"),
])
def test_a_bad_file_is_refused_with_one_line_and_nothing_changes(tmp_path: Path, content: Any, message: str) -> None:
    result, boot, config, data = provision(tmp_path, content)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("provisioning refused: "), result.stderr
    assert message in lines[0]
    assert message in (boot / "fieldgate-provision.error").read_text()
    assert (boot / "fieldgate-provision.yaml").exists()  # left in place, to be fixed
    assert sorted(p.name for p in config.iterdir()) == ["gateway.yaml"]
    assert not data.exists()


async def login_page(gateway: Any) -> tuple[str, httpx.AsyncClient]:
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gateway.api)),
                               base_url="http://testserver.local", timeout=10)
    return (await client.get("/login")).text, client


async def test_without_provisioning_no_user_exists_and_the_login_page_says_so(
        tmp_path: Path, start_gateway: Callable[..., Any]) -> None:
    gateway = await start_gateway(REPO / "image" / "gateway.yaml", tmp_path / "bare")
    page, client = await login_page(gateway)
    try:
        assert NO_USER in page
        response = await client.post("/login", data={"username": "admin", "password": "admin", "next": "/",
                                                     "_csrf": client.cookies.get("fieldgate_login_csrf", "")})
        assert response.status_code == 401  # no default password
    finally:
        await client.aclose()


async def test_the_provisioned_admin_logs_in(tmp_path: Path, start_gateway: Callable[..., Any]) -> None:
    result, _, config, data = provision(tmp_path, good_file())
    assert result.returncode == 0, result.stderr
    gateway = await start_gateway(config, data)
    page, client = await login_page(gateway)
    try:
        assert NO_USER not in page
        response = await client.post("/login", data={"username": "admin", "password": PASSWORD, "next": "/",
                                                     "_csrf": client.cookies.get("fieldgate_login_csrf", "")})
        assert response.status_code == 303
        devices = await client.get("/api/v1/devices")
        assert [d["name"] for d in devices.json()] == ["boiler-1"]
    finally:
        await client.aclose()
