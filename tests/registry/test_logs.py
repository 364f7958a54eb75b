"""A node's recent log fetched through the registry: a real registry, a real joined gateway answering over its
message long-poll and mutual TLS, the API's errors, and `fieldgate registry logs`."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.uplink.join import client_ssl_context
from tests.conftest import FIELDGATE, free_port
from tests.plants import LOGS_PLANT
from tests.registry.conftest import Registry, join, stop, wait_for_port, wait_until

NODE = "gw-logs"


class Fleet:
    def __init__(self, registry: Registry, viewer: str, silent_dir: Path) -> None:
        self.registry = registry
        self.viewer = viewer
        self.silent_dir = silent_dir

    def api(self, token: str | None = "viewer") -> httpx.Client:
        token = self.viewer if token == "viewer" else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify = ssl.create_default_context(cafile=str(self.registry.data_dir / "ca.pem"))
        return httpx.Client(base_url=self.registry.url, verify=verify, headers=headers, timeout=30)

    def logs_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*FIELDGATE, "registry", "logs", *args, "--data-dir", str(self.registry.data_dir)],
                              capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A registry with two joined nodes: gw-logs runs (a device that cannot connect, one that works), gw-silent
    never starts."""
    directory = tmp_path_factory.mktemp("registry-logs")
    registry = Registry(directory / "registry")
    registry.start()
    gateway = None
    try:
        data_dir = directory / "gw"
        token = registry.token("--max-uses", "2")
        assert join(registry, token, data_dir, "--name", NODE).returncode == 0
        assert join(registry, token, directory / "silent", "--name", "gw-silent").returncode == 0
        port = free_port()
        config = directory / "gw.yaml"
        plant = LOGS_PLANT.format(name=NODE, port=port, closed=free_port(), amplitude=8)
        config.write_text(plant, encoding="utf-8")
        gateway = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(data_dir)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, gateway)
        yield Fleet(registry, registry.cli("token", "create", "--role", "viewer").stdout.strip(), directory / "silent")
    finally:
        if gateway is not None:
            stop(gateway)
        if registry.process is not None:
            stop(registry.process)


def test_the_registry_fetches_a_nodes_log_filtered_by_device(fleet: Fleet) -> None:
    with fleet.api() as client:
        def device_lines() -> list[dict[str, object]]:
            response = client.get(f"/api/v1/nodes/{NODE}/logs", params={"device": "meter-down", "level": "warning"})
            assert response.status_code == 200, response.text
            return list(response.json()["records"])

        started = time.monotonic()
        records = wait_until(device_lines, what="the failing device's warnings")
        assert time.monotonic() - started < 10  # the long-poll answers at once, not at the next poll
        assert {r["device"] for r in records} == {"default/meter-down"}
        assert {r["level"] for r in records} <= {"warning", "error", "critical"}
        assert any("cannot connect" in str(r["message"]) for r in records)

        answer = client.get(f"/api/v1/nodes/{NODE}/logs", params={"device": "default/boiler-1"}).json()
        assert answer["node"] == NODE and answer["records"]
        assert all(r["device"] == "default/boiler-1" for r in answer["records"])
        assert any("is online" in r["message"] for r in answer["records"])
        newer = client.get(f"/api/v1/nodes/{NODE}/logs",
                           params={"device": "default/boiler-1", "after": answer["cursor"]}).json()
        assert newer["records"] == []  # the cursor follows: nothing new for that device since

    assert wait_until(lambda: fleet.registry.nodes()[NODE]["messages_pending"] == 0, what="acknowledged requests")


def test_the_node_logs_api_refuses_with_clear_statuses(fleet: Fleet) -> None:
    with fleet.api(None) as anonymous, fleet.api() as client:
        assert anonymous.get(f"/api/v1/nodes/{NODE}/logs").status_code == 401
        unknown = client.get("/api/v1/nodes/gw-nowhere/logs")
        assert unknown.status_code == 404 and "gw-nowhere" in unknown.json()["detail"]
        for query, named in (("level=loud", "?level=loud"), ("limit=0", "?limit=0"), ("timeout=5y", "?timeout=5y"),
                             ("timeout=600", "?timeout=600"), ("devcie=x", "?devcie")):
            response = client.get(f"/api/v1/nodes/{NODE}/logs?{query}")
            assert response.status_code == 400 and named in response.json()["detail"], (query, response.text)
        started = time.monotonic()
        silent = client.get("/api/v1/nodes/gw-silent/logs?timeout=1s")
        assert silent.status_code == 504, silent.text
        assert "gw-silent did not answer within 1 s" in silent.json()["detail"]
        assert 1.0 <= time.monotonic() - started < 5
    assert fleet.registry.nodes()["gw-silent"]["messages_pending"] == 0  # the unanswered request is withdrawn

    # answers come only from a node's certificate, and only for a request waiting for that node
    with fleet.api(None) as anonymous:
        assert anonymous.post("/api/v1/nodes/self/logs/abc", content=b"{}").status_code == 401
    with httpx.Client(base_url=fleet.registry.url, verify=client_ssl_context(fleet.silent_dir), timeout=10) as node:
        for path in ("/api/v1/nodes/self/logs/abc", "/api/v1/nodes/self/answers/abc"):
            late = node.post(path, content=b'{"records": []}')
            assert late.status_code == 404 and "no request abc is waiting" in late.json()["detail"]


def test_registry_logs_command_prints_a_nodes_lines(fleet: Fleet) -> None:
    result = fleet.logs_cli(NODE, "--device", "meter-down", "--level", "warning")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert lines and all("device=default/meter-down" in line for line in lines), result.stdout
    assert any("WARNING" in line and "cannot connect" in line for line in lines)

    as_json = fleet.logs_cli(NODE, "--device", "boiler-1", "--json", "--limit", "3")
    records = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert 0 < len(records) <= 3 and {r["device"] for r in records} == {"default/boiler-1"}

    silent = fleet.logs_cli("gw-silent", "--timeout", "1s")
    assert silent.returncode == 2 and "did not answer" in silent.stderr
    bad = fleet.logs_cli(NODE, "--since", "yesterday")
    assert bad.returncode == 2 and "--since=yesterday" in bad.stderr
    tokens = fleet.registry.cli("token", "list", "--json").stdout.splitlines()
    assert len(tokens) == 1  # only the test's own: the command's one-call tokens are gone
