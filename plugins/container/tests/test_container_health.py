"""Health checks of containers with real podman: exec checks run inside the container (and a timed-out one
leaves nothing behind there), http and tcp checks reach a mapped port where it is published and an unpublished
one at the container's own address."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from container_helpers import Images, Node, podman, wait_until
from fieldgate_container.runtime import LABEL_WORKLOAD


def shell(script: str) -> list[str]:
    return ["/bin/busybox", "sh", "-c", script]


def app(images: Images, name: str, command: list[str], health: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "runtime": "container", "image": images.tag(1), "command": command,
            "health": {"interval": "0.2s", "timeout": "5s", **health}, "restart_delay": "0.2s", "stop_grace": "1s",
            **extra}


async def status(node: Node, name: str, wanted: str) -> dict[str, Any] | None:
    found = await node.workload(name)
    return found if found["status"] == wanted else None


def prepare_host(tmp_path: Path) -> Path:
    """A file on the host all along (a check run there would pass); no /inside-only there."""
    assert not Path("/inside-only").exists()
    on_both = tmp_path / "ok"
    on_both.touch()
    return on_both


async def test_exec_checks_run_inside_the_container(images: Images, start_node: Callable[..., Any],
                                                    tmp_path: Path) -> None:
    on_both = prepare_host(tmp_path)
    node: Node = await start_node()
    await node.deploy(app(images, "hanging", ["/bin/busybox", "sleep", "300"],
                          {"type": "exec", "command": ["/bin/busybox", "sleep", "7"], "timeout": "1.5s",
                           "interval": "3s"}))
    await node.deploy(app(images, "inside", shell("/bin/busybox touch /inside-only; exec /bin/busybox sleep 300"),
                          {"type": "exec", "command": ["/bin/busybox", "test", "-f", "/inside-only"]}))
    await node.deploy(app(images, "gone", shell(f"/bin/busybox mkdir -p {tmp_path}; /bin/busybox touch {on_both}; "
                                                f"/bin/busybox sleep 2; /bin/busybox rm {on_both}; "
                                                "exec /bin/busybox sleep 300"),
                          {"type": "exec", "command": ["/bin/busybox", "test", "-f", str(on_both)],
                           "failure_threshold": 2}, restart="never"))

    def named(workload: str) -> list[str]:
        return podman("ps", "--filter", f"label={LABEL_WORKLOAD}={workload}", "--format", "{{.Names}}").split()

    [container] = await wait_until(lambda: named("default/hanging"))

    def checking() -> bool:
        return "/bin/busybox sleep 7" in [line.strip() for line in podman("top", container, "args").splitlines()]

    await wait_until(checking)
    started = time.monotonic()
    await wait_until(lambda: not checking())  # killed at the check's timeout, not left to sleep its 7 s
    assert time.monotonic() - started < 5
    hanging = await node.workload("hanging")
    assert hanging["status"] != "running" and not hanging["instances"][0]["ready"]

    await wait_until(lambda: status(node, "inside", "running"), timeout=30)
    gone = await wait_until(lambda: status(node, "gone", "failed"), timeout=30)
    events = (await node.api.get("/api/v1/workloads/default/gone/events")).json()
    assert [e["event"] for e in events][:5] == ["scheduled", "started", "ready", "unhealthy", "failed"]
    assert "exec check exited with 1 (2 checks in a row)" in events[3]["reason"], events[3]
    assert gone["reason"].endswith("(killed by signal 9)") and on_both.exists()


async def test_http_and_tcp_checks_reach_the_container(images: Images, start_node: Callable[..., Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FIELDGATE_CONTAINER_PUBLISH_ADDRESS", "127.0.0.2")  # not where the gateway itself listens
    node: Node = await start_node()
    httpd = ["/bin/busybox", "httpd", "-f", "-h", "/www", "-p"]
    await node.deploy(app(images, "named", [*httpd, "8080"], {"type": "http", "port": "http", "path": "/index.html"},
                          ports=[{"name": "http", "container_port": 8080}]))
    await node.deploy(app(images, "numbered", [*httpd, "8080"], {"type": "tcp", "port": 8080},
                          ports=[{"name": "http", "container_port": 8080}]))
    await node.deploy(app(images, "unpublished", [*httpd, "8081"], {"type": "http", "port": 8081,
                                                                     "path": "/index.html"}))
    for name in ("named", "numbered", "unpublished"):
        found = await wait_until(functools.partial(status, node, name, "running"), timeout=30)
        assert found["instances"][0]["ready"], found
