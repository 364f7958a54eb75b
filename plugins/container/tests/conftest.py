"""Fixtures: podman with runc, two tags of a small web image built here (busybox httpd, FROM scratch), and a
gateway serving its REST API on a free loopback port with an admin token."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from container_helpers import CONTAINERS_CONF, Images, Node, podman, static_busybox

from gateway.runtime import Gateway
from gateway.testing import free_port, start_gateway, write_config
from gateway.web.auth import create_token

__all__ = ["free_port", "images", "start_gateway", "start_node", "write_config"]


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Images]:
    """`<repo>:1` and `<repo>:2`, each serving /www/index.html = `version N`; removed at the end."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/bootstrap.sh installs podman and runc as root)")
    busybox = static_busybox()
    if busybox is None:
        pytest.skip("no static busybox for the test image (apt-get install busybox-static)")
    root = tmp_path_factory.mktemp("podman")
    set_conf = "CONTAINERS_CONF" not in os.environ
    if set_conf:
        (root / "containers.conf").write_text(CONTAINERS_CONF)
        os.environ["CONTAINERS_CONF"] = str(root / "containers.conf")
    probe = subprocess.run(["podman", "info", "--format", "{{.Host.OCIRuntime.Name}}"], capture_output=True,
                           text=True, timeout=60, check=False)
    if probe.returncode != 0:
        pytest.skip(f"podman cannot run here: {probe.stderr.strip()[-300:]}")
    repository = f"localhost/fieldgate-test-web-{uuid.uuid4().hex[:8]}"
    for version in (1, 2):
        context = root / f"image-{version}"
        (context / "www").mkdir(parents=True)
        shutil.copy(busybox, context / "busybox")
        (context / "www" / "index.html").write_text(f"version {version}\n")
        (context / "Containerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\nCOPY www /www\n")
        podman("build", "-q", "-t", f"{repository}:{version}", str(context))
    yield Images(repository)
    podman("rmi", "-f", f"{repository}:1", f"{repository}:2", check=False)
    if set_conf:
        del os.environ["CONTAINERS_CONF"]


@pytest.fixture
async def start_node(write_config: Callable[..., Path], start_gateway: Callable[..., Any]
                     ) -> AsyncIterator[Callable[..., Any]]:
    nodes: list[Node] = []

    async def start(documents: str = "", settings: str = "", data_dir: Path | None = None) -> Node:
        port = free_port()
        config = write_config(f"""\
kind: Gateway
name: edge-1
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
store: {{flush_interval: 50ms}}
""" + settings + ("---\n" + documents if documents else ""))
        gateway: Gateway = await start_gateway(config, data_dir, serve_http=True)
        node = Node(gateway, f"http://127.0.0.1:{port}", await create_token(gateway.store, "admin"))
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.api.aclose()
