"""Devices, security settings, volumes and lifecycle hooks of containers with real podman: a serial line made by
socat passed as a device, a privileged container for an admin only, a run-as-user container's files, a persistent
volume across an update, a rollback and a restart of the gateway, host paths inside and outside the allowed
prefixes, and pre_stop/post_start hooks as events."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from container_helpers import Images, Node, podman, wait_until
from fieldgate_container.runtime import LABEL_WORKLOAD

from gateway.testing import wait_until as wait_briefly
from gateway.web.auth import create_token


def containers(workload: str) -> list[str]:
    return podman("ps", "-a", "--filter", f"label={LABEL_WORKLOAD}={workload}", "--format", "{{.Names}}").split()


def shell(images: Images, name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "runtime": "container", "image": images.tag(1), "command": ["/bin/busybox", "sh", "-c",
                                                                                     script],
            "restart_delay": "0.2s", "stop_grace": "1s", **extra}


async def status(node: Node, name: str, wanted: str, version: int | None = None) -> dict[str, Any] | None:
    found = await node.workload(name)
    return found if found["status"] == wanted and version in (None, found["version"]) else None


async def events(node: Node, name: str) -> list[dict[str, Any]]:
    response = await node.api.get(f"/api/v1/workloads/default/{name}/events")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


@pytest.fixture
def serial_line(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two linked ptys made by socat: (the test's end, the app's end as its /dev/pts path)."""
    process = subprocess.Popen(["socat", f"pty,raw,echo=0,link={tmp_path}/a", f"pty,raw,echo=0,link={tmp_path}/b"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if (tmp_path / "a").exists() and (tmp_path / "b").exists():
                break
            process.poll()
            assert process.returncode is None, "socat ended"
            subprocess.run(["sleep", "0.05"], check=True)
        yield tmp_path / "a", Path(os.path.realpath(tmp_path / "b"))
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_a_container_reads_and_answers_on_a_serial_device(images: Images, start_node: Callable[..., Any],
                                                                serial_line: tuple[Path, Path]) -> None:
    mine, theirs = serial_line
    node: Node = await start_node()
    missing = shell(images, "nodev", "sleep 60", devices=[{"path": "/dev/ttyNOPE9"}], restart="never")
    await node.deploy(missing)
    failed = await wait_until(lambda: status(node, "nodev", "failed"))
    assert "$.devices[0].path: /dev/ttyNOPE9: No such file or directory" in failed["reason"]
    refused = await node.api.post("/api/v1/workloads", json={**missing, "name": "baddev",
                                                             "devices": [{"path": "/etc/passwd"}]})
    assert refused.status_code == 400 and "$.devices[0].path" in refused.text

    await node.deploy(shell(images, "modem", "while read line < /dev/ttyUSB0; do echo \"got $line\" > /dev/ttyUSB0; "
                                              "done",
                            devices=[{"path": str(theirs), "container_path": "/dev/ttyUSB0", "permissions": "rw"}]))
    await wait_until(lambda: status(node, "modem", "running"), timeout=30)
    [name] = containers("default/modem")
    inspected = json.loads(podman("inspect", name))[0]
    assert {"/dev/ttyUSB0"} <= {m["Destination"] for m in inspected["Mounts"]}  # a pty is passed as its inode

    fd = os.open(mine, os.O_RDWR | os.O_NOCTTY)
    try:
        answer = b""
        for _ in range(100):  # the app may not have opened its end yet: say it again until it answers
            os.write(fd, b"ping\n")
            await asyncio.sleep(0.2)
            os.set_blocking(fd, False)
            try:
                answer += os.read(fd, 1024)
            except BlockingIOError:
                pass
            finally:
                os.set_blocking(fd, True)
            if b"got ping" in answer:
                break
        assert b"got ping" in answer
    finally:
        os.close(fd)


async def test_privileged_user_capabilities_and_a_read_only_root(images: Images, start_node: Callable[..., Any]
                                                                 ) -> None:
    node: Node = await start_node()
    spec = shell(images, "admin-only", "sleep 60", security={"privileged": True})
    operator = await create_token(node.gateway.store, "operator")
    denied = await node.api.post("/api/v1/workloads", json=spec, headers={"Authorization": f"Bearer {operator}"})
    assert denied.status_code == 403  # deploying at all, privileged or not, is for admins on the node
    await node.deploy(spec)
    await wait_until(lambda: status(node, "admin-only", "running"), timeout=30)
    inspected = json.loads(podman("inspect", containers("default/admin-only")[0]))[0]
    assert inspected["HostConfig"]["Privileged"] is True

    await node.deploy(shell(images, "locked", "sleep 60", security={
        "run_as_user": 1234, "run_as_group": 2345, "read_only_root_filesystem": True,
        "capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN"]}}))
    await wait_until(lambda: status(node, "locked", "running"), timeout=30)
    inspected = json.loads(podman("inspect", containers("default/locked")[0]))[0]
    assert inspected["Config"]["User"] == "1234:2345"
    assert inspected["HostConfig"]["ReadonlyRootfs"] is True
    assert "CAP_NET_ADMIN" in inspected["HostConfig"]["CapAdd"]
    assert "CAP_CHOWN" in inspected["HostConfig"]["CapDrop"]
    process_side = await node.api.post("/api/v1/workloads", json={"name": "p", "command": ["sleep", "1"],
                                                                  "security": {"privileged": True}})
    assert process_side.status_code == 400 and "$.security.privileged: applies to containers only" in \
        process_side.text


async def test_a_persistent_volume_survives_update_rollback_and_restart(images: Images,
                                                                      start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()

    def keeper(version: int) -> dict[str, Any]:
        return shell(images, "keeper", f"echo start-{version} >> /data/starts; touch /scratch/mine; "
                                       "echo scratch $(ls /scratch | wc -l); sleep 60",
                     args=[] if version == 1 else [f"v{version}"], security={"run_as_user": 1234},
                     volumes=[{"name": "state", "persistent": True, "mount_path": "/data"},
                              {"name": "tmp", "scratch": True, "mount_path": "/scratch"}])

    await node.deploy(keeper(1))
    await wait_until(lambda: status(node, "keeper", "running", 1), timeout=30)
    state = node.gateway.data_dir / "volumes" / "default" / "keeper" / "state"
    await wait_until(lambda: (state / "starts").is_file())
    assert (state / "starts").stat().st_uid == 1234  # written by the app as its user

    await node.deploy(keeper(2))
    await wait_until(lambda: status(node, "keeper", "running", 2), timeout=30)
    response = await node.api.post("/api/v1/workloads/default/keeper/rollback", json={"version": 1})
    assert response.status_code == 202, response.text
    await wait_until(lambda: status(node, "keeper", "running", 3), timeout=30)
    await wait_until(lambda: (state / "starts").read_text().count("start-") == 3)

    await node.gateway.stop()  # the gateway restarts; the volume stays where it was
    node = await start_node()
    await wait_until(lambda: status(node, "keeper", "running"), timeout=30)
    await wait_until(lambda: (state / "starts").read_text().count("start-") == 4)
    assert (state / "starts").read_text() == "start-1\nstart-2\nstart-1\nstart-1\n"

    async def logged() -> list[str]:
        lines = (await node.api.get("/api/v1/workloads/default/keeper/logs")).json()["lines"]
        return [line["line"] for line in lines if line["line"].startswith("scratch")]

    lines = await wait_until(logged)
    assert set(lines) == {"scratch 1"}  # every instance had empty scratch space
    instances = node.gateway.data_dir / "workloads" / "default" / "keeper" / "instances"
    response = await node.api.delete("/api/v1/workloads/default/keeper")
    assert response.status_code == 200
    assert not list(instances.glob("*/scratch"))  # scratch went with its instance
    assert (state / "starts").is_file()  # the persistent volume stays


async def test_host_paths_only_under_the_allowed_prefixes(images: Images, start_node: Callable[..., Any],
                                                          tmp_path: Path) -> None:
    allowed = tmp_path / "shared"
    (allowed / "in").mkdir(parents=True)
    (allowed / "in" / "hello").write_text("from the host\n")
    node: Node = await start_node(settings=f"workloads: {{host_path_prefixes: [{allowed}]}}\n")
    outside = shell(images, "outside", "sleep 60", volumes=[{"name": "etc", "host_path": "/etc",
                                                             "mount_path": "/host-etc"}])
    refused = await node.api.post("/api/v1/workloads", json=outside)
    assert refused.status_code == 400
    assert (f"$.volumes[0].host_path: /etc is not under a prefix this node allows (the Gateway's "
            f"workloads.host_path_prefixes: {allowed})") in refused.json()["detail"]
    sneaky = {**outside, "volumes": [{"name": "etc", "host_path": f"{allowed}/../../etc", "mount_path": "/x"}]}
    assert "'..'" in (await node.api.post("/api/v1/workloads", json=sneaky)).json()["detail"]

    await node.deploy(shell(images, "reader", "cat /in/hello; echo x > /in/new || echo read-only; sleep 60",
                            volumes=[{"name": "in", "host_path": str(allowed / "in"), "mount_path": "/in",
                                      "read_only": True}]))

    async def logged() -> list[str]:
        lines = (await node.api.get("/api/v1/workloads/default/reader/logs")).json()["lines"]
        return [line["line"] for line in lines]

    lines = await wait_until(lambda: _having(logged, "read-only"))
    assert "from the host" in lines and not (allowed / "in" / "new").exists()


async def _having(read: Callable[[], Any], text: str) -> list[str] | None:
    lines: list[str] = await read()
    return lines if text in lines else None


async def test_pre_stop_runs_before_the_stop_and_its_output_is_an_event(images: Images,
                                                                       start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    await node.deploy(shell(images, "hooked", "exec /bin/busybox httpd -f -p 8080 -h /www",
                            ports=[{"name": "http", "container_port": 8080}],
                            lifecycle={"post_start": {"type": "exec", "command": ["/bin/busybox", "echo", "warm"]},
                                       "pre_stop": {"type": "exec", "timeout": "5s", "command": [
                                           "/bin/busybox", "sh", "-c", "echo draining; /bin/busybox wget -q -O - http://127.0.0.1:8080/index.html"]}}))
    await wait_until(lambda: status(node, "hooked", "running"), timeout=30)
    response = await node.api.post("/api/v1/workloads/default/hooked/stop")
    assert response.status_code == 202
    await wait_until(lambda: status(node, "hooked", "stopped"))

    async def hook_events() -> list[dict[str, Any]] | None:
        found = await events(node, "hooked")
        kinds = [e["event"] for e in sorted(found, key=lambda e: e["id"])]
        return found if "pre-stop" in kinds and "stopped" in kinds[kinds.index("pre-stop"):] else None

    found = await wait_briefly(hook_events)  # the instance stopped after its pre_stop hook had run
    [post_start] = [e for e in found if e["event"] == "post-start"]
    [pre_stop] = [e for e in found if e["event"] == "pre-stop"]
    assert post_start["reason"] == "exec hook succeeded: exit code 0: warm"
    # the app still served when the hook ran: the stop came after it
    assert pre_stop["reason"] == "exec hook succeeded: exit code 0: draining\nversion 1", pre_stop["reason"]
