"""The container runtime against a fake engine command line that records its arguments: exec checks run as
`<engine> exec <container> …`, http and tcp checks find the app's address, and a broken engine makes a clear
failed status rather than a crash."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from container_helpers import Node, wait_until
from fieldgate_container.pod import LABEL_CONTAINER, PodInstance
from fieldgate_container.runtime import ContainerInstance, ContainerRuntime, inside_dns

from gateway.errors import WorkloadError
from gateway.resources.durations import Duration
from gateway.resources.schema import HealthCheck, Workload, dec_hook
from gateway.workloads.health import probe
from gateway.workloads.model import InstanceSpec

FAKE_ENGINE = """\
#!{python}
import json, os, signal, sys, time
state = os.environ["FAKE_ENGINE_STATE"]
args = sys.argv[1:]
with open(os.path.join(state, "calls"), "a") as calls:
    calls.write(json.dumps(args) + "\\n")
if any("unreachable" in arg for arg in args):
    sys.stderr.write("Error: cannot connect to the engine: connection refused\\n")
    sys.exit(125)
run_pid = os.path.join(state, "run.pid")
if args[0] in ("run", "init") and any("norun" in arg for arg in args):
    sys.stderr.write("Error: OCI runtime error: runc: container init: permission denied\\n")
    sys.exit(126)
elif args[0] in ("run", "start"):
    open(run_pid, "w").write(str(os.getpid()))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(60)
elif args[0] == "inspect" and args[2].startswith("{{{{.State.Status}}}}"):
    print("running " + open(run_pid).read() + " 10.88.0.9 10.88.0.9")
elif args[0] == "inspect" and args[2].startswith("{{{{.State.Pid}}}}"):
    print(open(run_pid).read() + " 10.88.0.9 10.88.0.9")
elif args[0] == "inspect":
    print("0 false")
elif args[0] in ("stop", "rm") and os.path.exists(run_pid):
    os.kill(int(open(run_pid).read()), signal.SIGTERM)
    os.remove(run_pid)
elif args[0] == "exec":
    command = args[2:]
    if command[0] == "sleep":
        open(os.path.join(state, "exec.pid"), "w").write(str(os.getpid()))
        time.sleep(float(command[1]))
    elif command[0] == "false":
        sys.stderr.write("inside: no such file\\n")
        sys.exit(1)
"""


@pytest.fixture
def fake_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake engine's state directory (`calls` holds one JSON list of arguments per call)."""
    state = tmp_path / "engine"
    state.mkdir()
    engine = tmp_path / "fake-podman"
    engine.write_text(FAKE_ENGINE.format(python=sys.executable))
    engine.chmod(0o755)
    monkeypatch.setenv("FIELDGATE_CONTAINER_ENGINE", str(engine))
    monkeypatch.setenv("FAKE_ENGINE_STATE", str(state))
    monkeypatch.delenv("FIELDGATE_CONTAINER_PUBLISH_ADDRESS", raising=False)
    return state


def calls(state: Path, verb: str) -> list[list[str]]:
    found = [json.loads(line) for line in (state / "calls").read_text().splitlines()]
    return [args for args in found if args[0] == verb]


def workload(**fields: Any) -> Workload:
    document = {"name": "app", "runtime": "container", "image": "localhost/app:1", **fields}
    return msgspec.convert(document, Workload, dec_hook=dec_hook)


async def start(tmp_path: Path, spec: Workload, ports: dict[str, int] | None = None,
                env: dict[str, str] | None = None) -> ContainerInstance:
    runtime = ContainerRuntime(tmp_path / "data")
    work_dir = tmp_path / "data" / "instance"
    work_dir.mkdir(parents=True, exist_ok=True)
    instance = await runtime.start(InstanceSpec(spec, "app-1-0", 1, env or {}, {}, ports or {}, work_dir,
                                                lambda stream, line: None))
    assert isinstance(instance, ContainerInstance)
    return instance


async def test_exec_checks_run_inside_the_container(fake_engine: Path, tmp_path: Path) -> None:
    instance = await start(tmp_path, workload())
    try:
        inside = HealthCheck(type="exec", command=["test", "-f", "/inside-only"])
        assert await probe(inside, {}, {"PATH": "/nowhere"}, "/nowhere", instance) is None
        assert calls(fake_engine, "exec") == [["exec", instance.container, "test", "-f", "/inside-only"]]

        failing = HealthCheck(type="exec", command=["false"])
        assert await probe(failing, {}, {}, None, instance) == "exec check exited with 1: inside: no such file"

        hanging = HealthCheck(type="exec", command=["sleep", "30"], timeout=Duration(0.5))
        assert await probe(hanging, {}, {}, None, instance) == "exec check timed out after 0.5s"
        exec_pid = int((fake_engine / "exec.pid").read_text())
        with pytest.raises(ProcessLookupError):  # the timed-out `<engine> exec` is killed
            os.kill(exec_pid, 0)
    finally:
        await instance.stop(1.0)


async def test_http_and_tcp_checks_find_the_app(fake_engine: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    mapped = workload(ports=[{"name": "http", "container_port": 8080}, {"name": "admin"}])
    instance = await start(tmp_path, mapped, {"http": 31080, "admin": 31081})
    try:
        assert instance.address == "10.88.0.9"
        assert instance.check_address("http") == ("127.0.0.1", 31080)
        assert instance.check_address(8080) == ("127.0.0.1", 31080)  # the published port of a mapped one
        assert instance.check_address(31081) == ("127.0.0.1", 31081)  # no container_port: the same inside
        assert instance.check_address(9000) == ("10.88.0.9", 9000)  # not published: the container's own address
        assert instance.check_address("nope") is None
    finally:
        await instance.stop(1.0)

    monkeypatch.setenv("FIELDGATE_CONTAINER_PUBLISH_ADDRESS", "127.0.0.2")
    instance = await start(tmp_path, mapped, {"http": 31080, "admin": 31081})
    try:
        run = calls(fake_engine, "run")[-1]
        assert run[run.index("-p") + 1] == "127.0.0.2:31080:8080/tcp"
        assert instance.check_address("http") == ("127.0.0.2", 31080)
    finally:
        await instance.stop(1.0)

    instance = await start(tmp_path, workload(network="host", ports=[{"name": "http"}]), {"http": 31082},
                           {"FIELDGATE_DNS": "127.77.0.1:53"})
    try:
        run = calls(fake_engine, "run")[-1]
        assert run[run.index("--dns") + 1] == "127.77.0.1"  # on the host's network: the node's service names
        assert instance.check_address("http") == ("127.0.0.1", 31082)
        assert instance.check_address(9000) == ("127.0.0.1", 9000)
    finally:
        await instance.stop(1.0)


class _Services:
    """The node's services as a runtime sees them, with the answer of the privilege probe given (the probe itself is
    tested with the capability dropped in tests/services/test_netns.py)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem

    async def attach_namespace(self, pid: int, owner: str, client: str = "",
                               reserved: frozenset[tuple[int, str]] = frozenset()) -> Any:
        raise AssertionError("not asked here")

    def namespace_problem(self) -> str:
        return self.problem


def test_a_container_gets_the_responder_as_its_dns_only_where_something_answers_there(tmp_path: Path) -> None:
    """A bridge-network container is told to ask the node's DNS responder only when the gateway can open it in the
    container's namespace and the app does not answer DNS there itself; otherwise the engine's DNS stays."""
    env = {"FIELDGATE_DNS": "127.77.0.1:53"}

    def spec(services: _Services | None, **fields: Any) -> InstanceSpec:
        return InstanceSpec(workload(network="ports", **fields), "app-1-0", 1, env, {}, {}, tmp_path,
                            lambda stream, line: None, services=services)

    assert inside_dns(spec(_Services(""))) == "127.77.0.1"
    assert inside_dns(spec(None)) == ""  # no services on the node
    assert inside_dns(spec(_Services("setns: Operation not permitted"))) == ""
    assert inside_dns(spec(_Services(""), ports=[{"name": "dns", "container_port": 53, "protocol": "udp"}])) == ""


async def test_a_broken_engine_fails_the_workload_with_its_message(fake_engine: Path,
                                                                  start_node: Callable[..., Any]) -> None:
    node: Node = await start_node()
    await node.deploy({"name": "never", "runtime": "container", "image": "localhost/unreachable:1",
                       "restart": "never", "image_pull_policy": "Never"})
    await node.deploy({"name": "pulled", "runtime": "container", "image": "localhost/unreachable:1",
                       "restart": "never"})
    await node.deploy({"name": "norun", "runtime": "container", "image": "localhost/norun:1", "restart": "never"})

    async def failed(name: str) -> dict[str, Any] | None:
        found = await node.workload(name)
        return found if found["status"] == "failed" else None

    never = await wait_until(lambda: failed("never"))
    assert never["reason"].endswith(
        "cannot start: image 'localhost/unreachable:1' is not on this node and its pull policy is Never (fake-podman "
        "image inspect: cannot connect to the engine: connection refused)")
    pulled = await wait_until(lambda: failed("pulled"))
    assert pulled["reason"].endswith("cannot start: cannot pull image 'localhost/unreachable:1': fake-podman pull: "
                                     "Error: cannot connect to the engine: connection refused")
    norun = await wait_until(lambda: failed("norun"))
    # on a bridge network it is created and initialised first (the node's services go into its namespace)
    assert norun["reason"].endswith("cannot start: fake-podman init failed: OCI runtime error: runc: container "
                                    "init: permission denied")
    assert [e["event"] for e in (await node.api.get("/api/v1/workloads/default/norun/events")).json()] == [
        "scheduled", "failed"]


def test_the_nodes_files_area_is_mounted_read_only(tmp_path: Path) -> None:
    workload = msgspec.convert({"kind": "Workload", "name": "reader", "runtime": "container", "image": "busybox"},
                               Workload, dec_hook=dec_hook)
    area = tmp_path / "data" / "files"
    spec = InstanceSpec(workload, "reader-1-0", 1, {"FIELDGATE_FILES_DIR": str(area)}, {}, {}, tmp_path / "work",
                        lambda stream, line: None)
    args, env = ContainerRuntime(tmp_path / "data").run_args(spec, tmp_path / "instance-files")
    assert f"{area}:/run/fieldgate/area:ro" in args and area.is_dir()
    assert env["FIELDGATE_FILES_DIR"] == "/run/fieldgate/area"  # the path inside the container, not the host's


def pod_workload() -> Workload:
    return msgspec.convert({
        "kind": "Workload", "name": "shop", "runtime": "container", "env": {"SHARED": "all"},
        "volumes": [{"name": "shared", "scratch": True, "mount_path": "/shared"}, {"name": "own", "scratch": True}],
        "security": {"run_as_user": 1000},
        "containers": [
            {"name": "web", "image": "localhost/web:1", "ports": [{"name": "http", "container_port": 8080}]},
            {"name": "agent", "image": "localhost/agent:1", "command": ["/agent", "-v"], "args": ["--once"],
             "env": {"SHARED": "mine"}, "limits": {"memory": "32Mi", "cpu": 0.25}, "working_dir": "/work",
             "volume_mounts": [{"name": "own", "mount_path": "/own", "read_only": True}],
             "security": {"read_only_root_filesystem": True}}]}, Workload, dec_hook=dec_hook)


async def test_a_pod_container_runs_in_its_pod_with_its_own_settings(fake_engine: Path, tmp_path: Path) -> None:
    spec = InstanceSpec(pod_workload(), "shop-1-0", 1, {"SHARED": "all"}, {}, {"http": 31080}, tmp_path / "work",
                        lambda stream, line, container="": None,
                        volumes={"shared": tmp_path / "v-shared", "own": tmp_path / "v-own"})
    runtime = ContainerRuntime(tmp_path / "data")
    pod = PodInstance(runtime, runtime._engine(), spec, "fg-pod", "127.0.0.1")
    args, env = runtime.member_args(spec, pod, spec.workload.containers[1], "fg-pod-agent", tmp_path / "files")
    assert args[:5] == ["run", "--name", "fg-pod-agent", "--pod", "fg-pod"]
    assert f"{LABEL_CONTAINER}=agent" in args and "-p" not in args  # the pod publishes the ports
    assert args[args.index("--memory") + 1] == str(32 << 20) and args[args.index("--cpus") + 1] == "0.25"
    assert args[args.index("-w") + 1] == "/work" and "--read-only" in args
    assert "--user" not in args  # its own security settings replace the workload's
    assert f"{tmp_path / 'v-shared'}:/shared:rw" in args and f"{tmp_path / 'v-own'}:/own:ro" in args
    assert args[args.index("--entrypoint") + 1] == '["/agent", "-v"]' and args[-2:] == ["localhost/agent:1", "--once"]
    assert env["SHARED"] == "mine" and env["PORT"] == "8080" and env["FIELDGATE_PORT_HTTP"] == "8080"
    assert env["FIELDGATE_VOLUME_OWN"] == "/own" and env["FIELDGATE_VOLUME_SHARED"] == "/shared"


async def test_a_pod_needs_podman(fake_engine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docker = tmp_path / "fake-docker"
    docker.write_text(FAKE_ENGINE.format(python=sys.executable))
    docker.chmod(0o755)
    monkeypatch.setenv("FIELDGATE_CONTAINER_ENGINE", str(docker))
    runtime = ContainerRuntime(tmp_path / "data")
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    spec = InstanceSpec(pod_workload(), "shop-1-0", 1, {}, {}, {"http": 31080}, work_dir,
                        lambda stream, line, container="": None,
                        volumes={"shared": tmp_path / "v-shared", "own": tmp_path / "v-own"})
    with pytest.raises(WorkloadError, match=r"a workload with containers runs as a pod, which needs podman "
                                            r"\(fake-docker has no pods\)"):
        await runtime.start(spec)
    assert calls(fake_engine, "pod") == [] and calls(fake_engine, "run") == []
