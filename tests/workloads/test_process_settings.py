"""Devices, run-as user and group, volumes, lifecycle hooks and annotations of process workloads on a real gateway;
accelerators read from CDI spec files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.resources.schema import WorkloadSettings
from gateway.testing import wait_until
from gateway.workloads.accelerators import CDI_FILE_MAX, cdi_accelerators, node_accelerators
from tests.workloads.conftest import APPS, PYTHON, Node


@pytest.fixture
def serial_line(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """Two linked ptys made by socat: (the test's end, the app's end as its /dev/pts path)."""
    process = subprocess.Popen(["socat", f"pty,raw,echo=0,link={tmp_path}/a", f"pty,raw,echo=0,link={tmp_path}/b"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if (tmp_path / "a").exists() and (tmp_path / "b").exists():
                break
            assert process.poll() is None, "socat ended"
            subprocess.run(["sleep", "0.05"], check=True)
        yield tmp_path / "a", Path(os.path.realpath(tmp_path / "b"))
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory any user may write to, outside the test's private temporary directory."""
    path = Path(tempfile.mkdtemp(prefix="fieldgate-volume-"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def sh(name: str, script: str, **extra: Any) -> str:
    return json.dumps({"kind": "Workload", "name": name, "command": ["/bin/sh", "-c", script],
                       "restart_delay": "200ms", "stop_grace": "1s", **extra})


async def test_a_process_uses_a_checked_serial_device(start_node: Callable[..., Any],
                                                      serial_line: tuple[Path, Path]) -> None:
    mine, theirs = serial_line
    node: Node = await start_node(sh("modem", 'read line < "$DEV"; echo "got $line" > "$DEV"; sleep 30',
                                     env={"DEV": str(theirs)}, devices=[{"path": str(theirs), "permissions": "rw"}])
                                  + "\n---\n" + sh("nodev", "sleep 30", restart="never",
                                                  devices=[{"path": "/dev/ttyNOPE9", "permissions": "r"}]))
    found = await wait_until(lambda: _status(node, "nodev", "failed"))
    assert found["reason"].endswith("cannot start: $.devices[0].path: /dev/ttyNOPE9: No such file or directory")
    await wait_until(lambda: _status(node, "modem", "running"))
    fd = os.open(mine, os.O_RDWR | os.O_NOCTTY)
    try:
        os.write(fd, b"ping\n")
        answer = b""
        while b"\n" not in answer:
            answer += os.read(fd, 100)
        assert answer == b"got ping\n"
    finally:
        os.close(fd)


async def test_run_as_user_volumes_hooks_and_annotations(start_node: Callable[..., Any], open_dir: Path) -> None:
    app = {"kind": "Workload", "name": "web", "command": [PYTHON, str(APPS / "web.py")],
           "annotations": {"team.example.com/owner": "line crew"},
           "ports": [{"name": "http"}], "working_dir": "/", "restart_delay": "200ms", "stop_grace": "2s",
           "health": {"type": "http", "port": "http", "path": "/health", "interval": "200ms"},
           "lifecycle": {"post_start": {"type": "exec", "command": ["/bin/sh", "-c", "echo warm as $(id -u)"]},
                         "pre_stop": {"type": "http", "port": "http", "path": "/health", "timeout": "5s"}}}
    writer = sh("writer", 'id -u > "$FIELDGATE_VOLUME_OUT/uid"; echo "$FIELDGATE_VOLUME_STATE" > '
                          '"$FIELDGATE_VOLUME_OUT/state"; sleep 30', working_dir="/",
                security={"run_as_user": 1234, "run_as_group": 2345},
                volumes=[{"name": "out", "host_path": str(open_dir)}, {"name": "state", "persistent": True}])
    node: Node = await start_node(json.dumps(app) + "\n---\n" + writer,
                                  settings=f"workloads: {{host_path_prefixes: [{open_dir}]}}\n")
    try:
        await wait_until(lambda: (open_dir / "state").is_file() and (open_dir / "state").read_text().strip())
    except AssertionError:
        raise AssertionError(await node.workload("writer")) from None
    assert (open_dir / "uid").read_text() == "1234\n"
    assert ((open_dir / "uid").stat().st_uid, (open_dir / "uid").stat().st_gid) == (1234, 2345)
    state = Path((open_dir / "state").read_text().strip())
    assert state == node.gateway.data_dir / "volumes" / "default" / "writer" / "state"
    assert os.stat(state).st_uid == 1234  # the persistent volume belongs to the app's user

    found = await wait_until(lambda: _status(node, "web", "running"))
    assert found["annotations"] == {"team.example.com/owner": "line crew"}
    page = await node.api.get("/workloads/default/web")
    assert page.status_code == 200 and "team.example.com/owner" in page.text and "line crew" in page.text
    assert (await node.api.post("/api/v1/workloads/default/web/stop")).status_code == 202

    async def hooks_ran() -> dict[str, str] | None:
        found = {e["event"]: e["reason"] for e in (await node.api.get("/api/v1/workloads/default/web/events")).json()}
        return found if "pre-stop" in found else None

    events = await wait_until(hooks_ran)
    assert events["post-start"] == f"exec hook succeeded: exit code 0: warm as {os.getuid()}"
    assert events["pre-stop"].startswith("http hook succeeded: GET /health: HTTP/1.0 200 OK: ok")


async def test_a_node_does_not_run_what_needs_more_accelerators_than_it_has(start_node: Callable[..., Any],
                                                                           tmp_path: Path) -> None:
    node: Node = await start_node(sh("infer", "sleep 30", accelerators={"example.com/npu": 1}, replicas=2),
                                  settings=f"workloads: {{accelerators: {{example.com/npu: 1}}, "
                                           f"cdi_dirs: [{tmp_path}]}}\n")
    found = await wait_until(lambda: _status(node, "infer", "not-scheduled"))
    assert found["reason"] == "needs 2 x example.com/npu (this node offers 1)"
    status = (await node.api.get("/api/v1/status")).json()
    assert status["workloads"]["accelerators"] == {"example.com/npu": 1}


async def _status(node: Node, name: str, wanted: str) -> dict[str, Any] | None:
    found = await node.workload(name)
    return found if found["status"] == wanted else None


def test_accelerators_from_cdi_specs(tmp_path: Path) -> None:
    (tmp_path / "gpu.json").write_text(json.dumps({"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu", "devices": [
        {"name": "0", "containerEdits": {}}, {"name": "1", "containerEdits": {}}, {"name": "all"}]}))
    (tmp_path / "npu.yaml").write_text("cdiVersion: 0.6.0\nkind: huawei.com/Ascend310\ndevices:\n  - name: '0'\n")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "odd.yaml").write_text("kind: no-slash\ndevices: [{name: a}]\n")
    (tmp_path / "huge.json").write_bytes(b" " * (CDI_FILE_MAX + 1))
    (tmp_path / "notes.txt").write_text("kind: x.com/y")
    assert cdi_accelerators([str(tmp_path), str(tmp_path / "missing")]) == {"nvidia.com/gpu": 3,
                                                                           "huawei.com/Ascend310": 1}
    declared = WorkloadSettings(cdi_dirs=[str(tmp_path)], accelerators={"nvidia.com/gpu": 1, "example.com/fpga": 2})
    assert node_accelerators(declared) == {"nvidia.com/gpu": 1, "huawei.com/Ascend310": 1, "example.com/fpga": 2}
