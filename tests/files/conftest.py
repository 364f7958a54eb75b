"""A registry and joined gateway processes for the file tests, the nodes reaching the registry through the bad-link
proxy (gateway.badlink), which resets their connections when told."""

from __future__ import annotations

import hashlib
import json
import os
import ssl
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.badlink import BadLink, bad_link
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, pg_database, postgres, registry, stop, wait_for_port

__all__ = ["pg_database", "postgres", "registry"]
CHUNK = 1 << 20


def random_file(path: Path, size: int) -> str:
    """A file of random bytes; its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as stream:
        left = size
        while left:
            block = os.urandom(min(left, 1 << 20))
            digest.update(block)
            stream.write(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class FileNode:
    """A joined gateway process whose link to the registry goes through `link`; a client for its local API."""

    def __init__(self, registry: Registry, link: BadLink | None, tmp_path: Path, name: str, files: str = "",
                 eventbus: str = "none") -> None:
        self.name = name
        self.data_dir = tmp_path / name
        result = join(registry, registry.token(), self.data_dir, "--name", name)
        assert result.returncode == 0, result.stderr
        if link is not None:  # the node's registry URL: the proxy (the registry's certificate names 127.0.0.1)
            self.route_through(link.url)
        self.port = free_port()
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(textwrap.dedent(f"""\
            kind: Gateway
            name: {name}
            http: {{listen: "127.0.0.1:{self.port}"}}
            eventbus: {{url: "{eventbus}"}}
            """) + (f"files: {files}\n" if files else ""))
        token = subprocess.run([*FIELDGATE, "token", "create", "--role", "operator", "--data-dir",
                                str(self.data_dir)], capture_output=True, text=True, timeout=30, check=True)
        self.local = httpx.Client(base_url=f"http://127.0.0.1:{self.port}",
                                  headers={"Authorization": f"Bearer {token.stdout.strip()}"}, timeout=30)
        self.process: subprocess.Popen[bytes] | None = None

    def route_through(self, url: str) -> None:
        settings_path = self.data_dir / "registry" / "registry.json"
        settings = json.loads(settings_path.read_text())
        settings["url"] = url
        settings_path.write_text(json.dumps(settings))

    def start(self) -> None:
        log = (self.data_dir / "gateway.log").open("ab")
        self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(self.config), "--data-dir", str(self.data_dir)],
                                        stdout=log, stderr=log)
        wait_for_port(self.port, self.process, timeout=30)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def files(self) -> dict[str, Any]:
        try:
            answer = self.local.get("/api/v1/files")
        except httpx.HTTPError:
            return {"received": [], "sent": []}
        assert answer.status_code == 200, answer.text
        files: dict[str, Any] = answer.json()
        return files

    def received(self, file_id: str) -> dict[str, Any] | None:
        return next((f for f in self.files()["received"] if f["id"] == file_id), None)

    def close(self) -> None:
        self.stop()
        self.local.close()


def registry_api(registry: Registry, role: str = "operator") -> httpx.Client:
    token = registry.cli("token", "create", "--role", role, "--scope", "platform").stdout.strip()
    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    return httpx.Client(base_url=registry.url, verify=context, headers={"Authorization": f"Bearer {token}"},
                        timeout=60)


@pytest.fixture
def link(registry: Registry) -> Iterator[BadLink]:
    with bad_link(registry.port, seed=17) as started:
        yield started
