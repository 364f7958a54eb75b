"""Helpers for the container runtime tests: the podman command line, the test images and a gateway node."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from gateway import testing
from gateway.runtime import Gateway

CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""


def podman(*args: str, timeout: float = 60, check: bool = True) -> str:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def static_busybox() -> Path | None:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        path = Path(candidate)
        if path.is_file() and b"ld-linux" not in path.read_bytes()[:8192]:  # no program interpreter: static
            return path
    return None


@dataclass
class Images:
    repository: str

    def tag(self, version: int) -> str:
        return f"{self.repository}:{version}"


wait_until = functools.partial(testing.wait_until, timeout=20.0, every=0.1)  # container steps are slower


class Node:
    """A running gateway and an admin client for its REST API."""

    def __init__(self, gateway: Gateway, base: str, token: str) -> None:
        self.gateway = gateway
        self.api = httpx.AsyncClient(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"})

    async def workload(self, name: str) -> dict[str, Any]:
        response = await self.api.get(f"/api/v1/workloads/default/{name}")
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def deploy(self, document: dict[str, Any]) -> None:
        response = await self.api.post("/api/v1/workloads", json=document)
        assert response.status_code == 201, response.text
