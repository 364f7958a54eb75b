"""Acceptance: a real gateway joined to a real registry runs a registry workload (a process, and a podman container
where podman runs here) that idles until told, then allocates 50 MB and burns CPU. The registry's per-instance
figures of it rise; the registry's app page, the node's /metrics and the node's app page show the instance.

The figures are per-minute means at the registry and the node samples every 10 s, so each step waits up to a few
minutes on this shared machine."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import FIELDGATE
from tests.registry.conftest import Registry, wait_until
from tests.registry.test_access import add_user, api, cli, login
from tests.registry.test_batch_workloads import Gateway
from tests.registry.test_workload_pages import NODE, registry_and_node

pytestmark = pytest.mark.beside  # several real gateways and a registry, mostly waiting
MIB = 1 << 20
WAIT = 240.0  # seconds: a sample every 10 s, kept as the mean of its minute, on a machine shared with other runs
# idles until $FIELDGATE_FILES/go exists, then allocates (and touches) 50 MB and burns CPU until stopped
BURNER = """\
import os, time
go = os.path.join(os.environ["FIELDGATE_FILES"], "go")
while not os.path.exists(go):
    time.sleep(0.2)
block = bytearray(50 << 20)
for i in range(0, len(block), 4096):
    block[i] = 1
while True:
    sum(range(10000))
"""
# the same in a container of busybox: tmpfs pages (/dev/shm) are charged to the container's memory cgroup
CONTAINER_BURNER = ("until [ -e /run/fieldgate/files/go ]; do sleep 0.2; done; "
                    "dd if=/dev/zero of=/dev/shm/fill bs=1M count=50; while :; do :; done")
CONTAINERS_CONF = ('[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n'
                   '[engine]\nruntime = "runc"\n')


def workload(name: str, body: str) -> str:
    return f"---\nkind: Workload\nname: {name}\nnode: {NODE}\nstop_grace: 1s\n{body}"


class Fleet:
    def __init__(self, registry: Registry, gateway: Gateway, tmp_path: Path) -> None:
        self.registry, self.gateway, self.tmp_path = registry, gateway, tmp_path
        self.viewer = cli(registry, "token", "create", "--role", "viewer").stdout.strip()

    def apply(self, text: str, label: str) -> None:
        path = self.tmp_path / f"{label}.yaml"
        path.write_text(text)
        cli(self.registry, "apply", "-f", str(path))

    def instance(self, name: str) -> str:
        """The id of the workload's running instance, as the node reports it to the registry."""
        def running() -> str | None:
            with api(self.registry, self.viewer) as client:
                views = [w for w in client.get("/api/v1/workloads").json() if w["name"] == name and w["node"] == NODE]
            ready = [i for v in views for i in v["instances"] if v["status"] == "running" and i["ready"]]
            return str(ready[0]["id"]) if ready else None

        found: str = wait_until(running, timeout=60, what=f"{name} running on {NODE}")
        return found

    def latest(self, name: str, instance: str) -> dict[str, Any] | None:
        """The registry's latest minute of the instance's figures, once it has a CPU figure."""
        with api(self.registry, self.viewer) as client:
            answer = client.get(f"/api/v1/workloads/default/{name}/metrics", params={"since": "10m"})
        assert answer.status_code == 200, answer.text
        for seen in answer.json()["instances"]:
            if seen["node"] == NODE and seen["instance"] == instance and seen["latest"]["cpu_percent"] is not None:
                return dict(seen["latest"])
        return None

    def burn(self, name: str, instance: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The instance's figures at the registry before and after it is told to burn: (idle, busy)."""
        idle: dict[str, Any] = wait_until(lambda: self.latest(name, instance), timeout=WAIT,
                                          what=f"the registry's first figures of {instance}")
        files = self.gateway.data_dir / "workloads" / "default" / name / "instances" / instance / "files"
        (files / "go").write_text("")

        def risen() -> dict[str, Any] | None:
            now = self.latest(name, instance)
            # a minute's mean: the minute the burn starts in holds idle samples too, so wait for a whole one
            if now and now["cpu_percent"] > max(25.0, idle["cpu_percent"] + 15) and (
                    now["memory_bytes"] or 0) > max((idle["memory_bytes"] or 0) + 40 * MIB, 50 * MIB):
                return now
            return None

        busy: dict[str, Any] = wait_until(risen, timeout=WAIT, what=f"the figures of {instance} rising at the "
                                                                    f"registry (idle: {idle})")
        return idle, busy


def podman_image(tmp_path: Path) -> str | None:
    """A busybox image built here, or None where podman cannot run containers."""
    busybox = next((Path(p) for p in ("/bin/busybox", "/usr/bin/busybox") if Path(p).is_file()), None)
    if shutil.which("podman") is None or busybox is None:
        return None
    if "CONTAINERS_CONF" not in os.environ:
        (tmp_path / "containers.conf").write_text(CONTAINERS_CONF)
        os.environ["CONTAINERS_CONF"] = str(tmp_path / "containers.conf")  # the gateway started next inherits it
    context = tmp_path / "image"
    context.mkdir()
    shutil.copy(busybox, context / "busybox")
    (context / "Containerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
    tag = f"localhost/fieldgate-test-burner-{uuid.uuid4().hex[:8]}:1"
    built = subprocess.run(["podman", "build", "-q", "-t", tag, str(context)], capture_output=True, text=True,
                           timeout=120, check=False)
    return tag if built.returncode == 0 else None


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Fleet, str | None]]:
    tmp_path = tmp_path_factory.mktemp("app-figures")
    conf = os.environ.get("CONTAINERS_CONF")
    image = podman_image(tmp_path)
    try:
        with registry_and_node(tmp_path) as (registry, gateway):
            yield Fleet(registry, gateway, tmp_path), image
    finally:
        if image is not None:
            subprocess.run(["podman", "rmi", "-f", image], capture_output=True, timeout=60, check=False)
        if conf is None:
            os.environ.pop("CONTAINERS_CONF", None)


def test_a_process_apps_cpu_and_memory_rise_at_the_registry(fleet: tuple[Fleet, str | None]) -> None:
    nodes, _ = fleet
    script = nodes.tmp_path / "burner.py"
    script.write_text(BURNER)
    nodes.apply(workload("burner", f"command: [{sys.executable}, {script}]\n"), "burner")
    instance = nodes.instance("burner")
    idle, busy = nodes.burn("burner", instance)
    assert idle["cpu_percent"] < 25 and busy["memory_bytes"] > 50 * MIB
    assert busy["net_rx_bps"] is None, "an app on the host's network has no network figures of its own"

    add_user(nodes.registry, nodes.tmp_path, "olga", "--role", "viewer")
    with login(nodes.registry, "olga") as browser:
        page = browser.get("/workloads/default/burner")
        assert page.status_code == 200
        assert f'<tr data-instance="{instance}" data-node="{NODE}">' in page.text
        assert 'data-plot-src="/workloads/default/burner/metrics"' in page.text
        data = browser.get("/workloads/default/burner/metrics", params={"window": "1h"}).json()
        assert any(v for v in data["series"][f"cpu_percent@{NODE}/{instance}"] if v and v > 25)
        node_page = browser.get(f"/nodes/{NODE}")
        assert f'<tr data-instance="{instance}">' in node_page.text and 'id="node-allocatable">' in node_page.text

    # the node's own /metrics and app page show the instance too
    local_token = subprocess.run([*FIELDGATE, "token", "create", "--role", "viewer", "--data-dir",
                                  str(nodes.gateway.data_dir)], capture_output=True, text=True, timeout=30,
                                 check=True).stdout.strip()
    with httpx.Client(base_url=f"http://127.0.0.1:{nodes.gateway.port}", timeout=10,
                      headers={"Authorization": f"Bearer {local_token}"}) as local:
        metrics = local.get("/metrics").text
        labels = f'workload="default/burner",workload_instance="{instance}"'
        cpu_line = next(line for line in metrics.splitlines()
                        if line.startswith(f"fieldgate_workload_cpu_seconds_total{{{labels}}}"))
        assert float(cpu_line.split()[-1]) > 1.0
        memory_line = next(line for line in metrics.splitlines()
                           if line.startswith(f"fieldgate_workload_memory_bytes{{{labels}}}"))
        assert float(memory_line.split()[-1]) > 50 * MIB
        page = local.get("/workloads/default/burner")
        assert page.status_code == 200 and f'<tr data-instance="{instance}"><th>{instance}</th>' in page.text
        assert 'data-plot-src="/plots/workloads/default/burner"' in page.text
        data = local.get("/plots/workloads/default/burner", params={"window": "15m"}).json()
        assert data["instances"] == [instance] and any(
            v and v > 25 for v in data["series"][f"cpu_percent@{instance}"])
        assert local.get("/plots/workloads/default/burner", params={"window": "2d"}).status_code == 400
    nodes.apply(workload("burner", "replicas: 0\ncommand: [/bin/true]\n"), "burner-off")


def test_a_containers_cpu_and_memory_rise_at_the_registry(fleet: tuple[Fleet, str | None]) -> None:
    nodes, image = fleet
    if image is None:
        pytest.skip("podman cannot run containers here (the container runtime's tests say why)")
    nodes.apply(workload("burner-c", f"runtime: container\nimage: {image}\nimage_pull_policy: Never\n"
                         f"command: [/bin/busybox, sh, -c, '{CONTAINER_BURNER}']\nnetwork: ports\n"),
                "burner-c")
    instance = nodes.instance("burner-c")
    idle, busy = nodes.burn("burner-c", instance)
    assert idle["cpu_percent"] < 25 and busy["memory_bytes"] > 50 * MIB
    assert busy["net_rx_bps"] is not None, "a container on its own network has network figures"
    nodes.apply(workload("burner-c", f"replicas: 0\nruntime: container\nimage: {image}\n"), "burner-c-off")
