"""The `container` runtime: every instance is a container run by the podman (or docker) command line, attached so
its stdout and stderr become the workload's log, labelled so a restarted gateway finds and removes its own.

The node's services: a container on the host's network reaches their loopback addresses as they are and gets the
DNS responder as its DNS server (`--dns`). One on a bridge network (`network: ports`, and every pod) has a network
namespace of its own: with podman it is created (`podman create`, `podman init`: the namespace exists, the app has not
started), the node's services are opened inside its namespace (or the pod's), and only then started, attached
(`podman start --attach`); it gets `--dns` too, the responder answering at port 53 in its namespace. The services
inside close when the container ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import time
from collections import deque
from pathlib import Path
from typing import ClassVar

import psutil

from fieldgate_container.engine import Engine, Result, find_engine, last_line, wanted
from fieldgate_container.pod import (
    LABEL_CONTAINER,
    PodInstance,
    check_address,
    create_pod,
    member_mounts,
    pod_address,
)
from gateway.errors import WorkloadError
from gateway.resources.schema import Capabilities, Container, Limits, SecuritySettings, Workload
from gateway.workloads.figures import Counters, own_cgroup_counters, process_tree
from gateway.workloads.health import HOST, run_check_command
from gateway.workloads.model import (
    Exit,
    Instance,
    InstanceSpec,
    NamespaceServices,
    Runtime,
    mib,
    read_lines,
    write_files,
)
from gateway.workloads.mounts import own_files

log = logging.getLogger(__name__)
PUBLISH_ADDRESS_VARIABLE = "FIELDGATE_CONTAINER_PUBLISH_ADDRESS"  # host address of mapped ports; all when unset
LABEL_OWNER = "io.fieldgate.data-dir"
LABEL_WORKLOAD = "io.fieldgate.workload"
LABEL_INSTANCE = "io.fieldgate.instance"
LABEL_VERSION = "io.fieldgate.version"
FILES_MOUNT = "/run/fieldgate/files"
AREA_MOUNT = "/run/fieldgate/area"  # the node's files area (files from the registry), read-only
STARTED_MARKER = "containers-started"  # in <data dir>/workloads: the engine is asked for leftovers only when present
HOST_ONLY = ("PATH", "HOME", "LANG")  # the gateway's values mean nothing inside an image
STARTED_TIMEOUT = 15.0
ENGINE_FAILED = (125, 126, 127)  # the engine could not create or start the container
INSPECT_STARTED = ("{{.State.Pid}} {{.NetworkSettings.IPAddress}} "
                   "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}")  # the pid, then its addresses
INSPECT_RUNNING = "{{.State.Status}} " + INSPECT_STARTED  # its state first ("running" once it runs)


def security_args(workload: Workload, security: SecuritySettings | None = None) -> list[str]:
    """The `run` arguments of the workload's devices and security settings (or a pod container's own)."""
    args: list[str] = []
    for device in workload.devices:
        inside = device.container_path or device.path
        if device.path.startswith("/dev/pts/"):  # a pseudo-terminal opens only through its own devpts inode
            with contextlib.suppress(OSError):
                number = os.stat(device.path).st_rdev
                args += ["-v", f"{device.path}:{inside}", "--device-cgroup-rule",
                         f"c {os.major(number)}:{os.minor(number)} {device.permissions}"]
                continue
        args += ["--device", f"{device.path}:{inside}:{device.permissions}"]
    security = security or workload.secured
    if security.privileged:
        args.append("--privileged")
    if security.run_as_user is not None or security.run_as_group is not None:
        user = "" if security.run_as_user is None else str(security.run_as_user)
        group = "" if security.run_as_group is None else f":{security.run_as_group}"
        args += ["--user", (user or "0") + group]
    args += [arg for cap in (security.capabilities or Capabilities()).add for arg in ("--cap-add", cap)]
    args += [arg for cap in (security.capabilities or Capabilities()).drop for arg in ("--cap-drop", cap)]
    if security.read_only_root_filesystem:
        args.append("--read-only")
    return args


def limit_args(limits: Limits) -> list[str]:
    args: list[str] = []
    if limits.memory is not None:
        memory = str(int(limits.memory))
        args += ["--memory", memory, "--memory-swap", memory]
    if limits.cpu is not None:
        args += ["--cpus", f"{limits.cpu:g}"]
    return args


def pull_policy(workload: Workload) -> str:
    return workload.image_pull_policy


def publish_address() -> str:
    """The host address mapped ports are published on ($FIELDGATE_CONTAINER_PUBLISH_ADDRESS), empty for all."""
    return os.environ.get(PUBLISH_ADDRESS_VARIABLE, "")


def inside_dns(spec: InstanceSpec) -> str:
    """The DNS responder's address for a container whose own network namespace gets the node's services (its
    resolv.conf names it; it answers at port 53 there), "" when it gets none (no services on the node)."""
    if spec.services is None or spec.workload.network != "ports" or (53, "UDP") in own_ports(spec):
        return ""  # none, or the app answers DNS there itself
    if spec.services.namespace_problem():
        return ""  # nothing would answer at the responder's address there: the engine's DNS stays
    host, _, port = spec.env.get("FIELDGATE_DNS", "").rpartition(":")
    return host if host and port.isdigit() else ""


def own_ports(spec: InstanceSpec) -> frozenset[tuple[int, str]]:
    """The (port, `TCP`/`UDP`) the app listens on in its own network namespace (its mapped ports, of every container
    of a pod): the node's services leave them to it."""
    return frozenset((port.container_port or spec.ports.get(port.name, 0), port.protocol.upper())
                     for port in spec.workload.all_ports)


def is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def reach_published(address: str) -> str:
    """The host to connect to for a port published on `address`."""
    address = address.strip("[]")
    if address in ("", "0.0.0.0"):
        return HOST
    return "::1" if address == "::" else address


class ContainerInstance(Instance):
    def __init__(self, engine: Engine, process: asyncio.subprocess.Process, spec: InstanceSpec,
                 container: str, published_on: str = "", log_as: str = "") -> None:
        self.engine = engine
        self.log_as = log_as  # the container's name in a pod: its log lines say so
        self.process = process
        self.spec = spec
        self.container = container
        self.published_host = reach_published(published_on)
        self.memory_limit = spec.workload.limits.memory
        self.address = ""  # the container's own IP address, when it has one (not on the host's network)
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.stop_reason = ""
        self.engine_failed = False  # the engine could not run the container (its message is the exit's reason)
        self.services: NamespaceServices | None = None  # the node's services in its network namespace
        self.verb = "run"  # how the engine runs it: `run`, or `start` once created
        self._pumps = [asyncio.create_task(self._pump(process.stdout, "stdout")),
                       asyncio.create_task(self._pump(process.stderr, "stderr"))]
        self._ended = asyncio.create_task(self._wait())

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        await read_lines(stream, lambda raw: self._line(name, raw))

    def _line(self, stream: str, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip("\r")
        if stream == "stderr":
            self.stderr_tail.append(text)
        try:
            if self.log_as:
                self.spec.log(stream, text, self.log_as)
            else:
                self.spec.log(stream, text)
        except Exception as exc:  # a full disk must not stop the app
            log.warning("workload log of %s: %s", self.spec.instance, exc)

    async def wait_started(self) -> None:
        """Until the container runs (its pid and address known) or has already ended."""
        async with asyncio.timeout(STARTED_TIMEOUT):
            while self.process.returncode is None:
                found = Result(1, "", "")
                with contextlib.suppress(WorkloadError):
                    found = await self.engine.call("inspect", "--format", INSPECT_RUNNING, self.container,
                                                   check=False)
                status, pid, *addresses = (found.out.split() if found.code == 0 else []) or ["", ""]
                # a created and initialised container has its pid before `start` runs it: an exec into it (a
                # post_start hook) fails until it is running
                if status == "running" and pid.isdigit() and int(pid) > 0:
                    self.pid = int(pid)
                    self.address = next((a for a in addresses if is_address(a)), "")
                    return
                await asyncio.sleep(0.05)

    def exec_argv(self, command: list[str]) -> list[str]:
        """The host command line that runs `command` in the container (lifecycle hooks)."""
        return [str(self.engine.path), "exec", self.container, *command]

    def counters(self) -> Counters | None:
        """The counters of the cgroup the engine made for the container (its process tree when it has none)."""
        if self.pid is None:
            return None
        return own_cgroup_counters(self.pid) or process_tree(self.pid)

    async def exec_check(self, command: list[str]) -> str | None:
        """Run an exec health check inside the container (`<engine> exec`), in the container's environment."""
        since = time.time()
        try:
            return await run_check_command([str(self.engine.path), "exec", self.container, *command])
        except asyncio.CancelledError:
            self._end_exec_leftovers(command, since)
            raise

    def _end_exec_leftovers(self, command: list[str], since: float) -> None:
        """A killed `<engine> exec` leaves its command running in the container: find it among the processes in
        the container's pid namespace by its command line and start time, and kill it with its children."""
        if self.pid is None:
            return
        try:
            namespace = os.readlink(f"/proc/{self.pid}/ns/pid")
        except OSError:
            return
        for process in psutil.process_iter(["cmdline", "create_time"]):
            with contextlib.suppress(psutil.Error, OSError):
                if (process.info["cmdline"] == command and process.info["create_time"] >= since - 1
                        and os.readlink(f"/proc/{process.pid}/ns/pid") == namespace):
                    for leftover in [*process.children(recursive=True), process]:
                        leftover.kill()

    def check_address(self, port: int | str) -> tuple[str, int] | None:
        """Where http and tcp checks reach the app (see fieldgate_container.pod.check_address)."""
        return check_address(self.spec, self.published_host, self.address, port)

    async def wait(self) -> Exit:
        return await asyncio.shield(self._ended)

    async def _wait(self) -> Exit:
        code = await self.process.wait()
        if self.services is not None:  # its namespace goes with it: nothing of the gateway may hold it
            self.services.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.gather(*self._pumps, return_exceptions=True)
        state = Result(1, "", "")
        with contextlib.suppress(WorkloadError):
            state = await self.engine.call("inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}",
                                           self.container, check=False)
        with contextlib.suppress(WorkloadError):
            await self.engine.call(*self.engine.remove_args(self.container), check=False)
        exit_code, _, oom_killed = state.out.strip().partition(" ")
        engine_error = next((t for t in reversed(self.stderr_tail) if t.strip()), "")
        exit_ = Exit(code=code)
        if state.code == 0 and oom_killed == "true":
            limit = self.memory_limit
            exit_.oom = True
            exit_.reason = "out of memory: killed by the kernel" + (f" at its limit of {mib(limit)}" if limit else "")
        elif code in ENGINE_FAILED and engine_error.startswith("Error: "):  # the engine's own message says why
            exit_.reason = f"{self.engine.name} {self.verb} failed: {engine_error.removeprefix('Error: ')[:300]}"
            self.engine_failed = True
        elif exit_code.isdigit() and 128 < int(exit_code) <= 128 + 64:
            exit_ = Exit(signal=int(exit_code) - 128)
        elif exit_code.isdigit():
            exit_.code = int(exit_code)
        if self.stop_reason and not exit_.oom:
            exit_.reason = f"{self.stop_reason} ({exit_.describe()})"
        return exit_

    async def stop(self, grace: float, reason: str = "") -> None:
        if self.process.returncode is None:
            self.stop_reason = self.stop_reason or reason
            with contextlib.suppress(WorkloadError):
                await self.engine.call("stop", "-t", str(math.ceil(grace)), self.container, timeout=grace + 15,
                                       check=False)
            try:
                async with asyncio.timeout(5):
                    await self.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        await self.wait()


class ContainerRuntime(Runtime):
    """Runs a workload's `image` (with `command` as entrypoint and `args`) as a container."""

    name: ClassVar[str] = "container"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.owner = str(data_dir.resolve())
        self.prefix = "fg-" + hashlib.sha256(self.owner.encode()).hexdigest()[:8]
        self.marker = data_dir / "workloads" / STARTED_MARKER
        self.engine: Engine | None = None
        self.version = ""
        self._find_engine()
        if self.marker.exists():
            self.remove_leftovers()

    def _find_engine(self) -> Engine | None:
        path = find_engine()
        if path is None:
            self.engine = None
        elif self.engine is None or self.engine.path != path:
            self.engine, self.version = Engine(path), ""
        return self.engine

    def unavailable(self) -> str | None:
        return None if self._find_engine() is not None else wanted()

    def describe(self) -> dict[str, str]:
        if self.engine is None:
            return {"engine": "none", "reason": wanted()}
        if not self.version:
            with contextlib.suppress(WorkloadError):
                self.version = self.engine.call_sync("--version", timeout=10).out.strip()
        return {"engine": str(self.engine.path), "version": self.version,
                "limits": "the engine's --memory and --cpus"}

    def remove_leftovers(self) -> None:
        """Remove the containers a previous gateway on this data dir left behind (found by their label)."""
        if self.engine is None:
            return
        try:
            found = self.engine.call_sync("ps", "-a", "-q", "--filter", f"label={LABEL_OWNER}={self.owner}").out
            if found.split():
                log.warning("removing %d containers left by the previous gateway", len(found.split()))
                self.engine.call_sync(*self.engine.remove_args(*found.split()), timeout=60)
            if self.engine.is_podman:
                pods = self.engine.call_sync("pod", "ps", "-q", "--filter", f"label={LABEL_OWNER}={self.owner}").out
                if pods.split():
                    log.warning("removing %d pods left by the previous gateway", len(pods.split()))
                    self.engine.call_sync("pod", "rm", "-f", "-t", "0", *pods.split(), timeout=60)
        except WorkloadError as exc:
            log.warning("containers left by the previous gateway not removed: %s", exc)

    def _engine(self) -> Engine:
        engine = self._find_engine()
        if engine is None:
            raise WorkloadError(wanted())
        return engine

    async def prepare(self, workload: Workload) -> None:
        """Have the images on the node by the pull policy, while the old version still runs."""
        engine = self._engine()
        images = [c.image for c in (*workload.init_containers, *workload.containers)] if workload.is_pod else \
            [workload.image]
        if not images[0]:
            raise WorkloadError(f"Workload {workload.namespace}/{workload.name}: $.image: the container runtime "
                                "needs an image")
        policy = pull_policy(workload)
        for image in dict.fromkeys(i for i in images if i):
            if policy == "Always":
                await engine.pull(image)
            elif (missing := await engine.image_missing(image)) is not None:
                if policy == "Never":
                    raise WorkloadError(f"image {image!r} is not on this node and its pull policy is Never "
                                        f"({engine.name} image inspect: {missing})")
                await engine.pull(image)

    def container_name(self, spec: InstanceSpec) -> str:
        return f"{self.prefix}-{spec.workload.namespace}-{spec.instance}"

    def base_env(self, spec: InstanceSpec, own_env: dict[str, str], files_dir: Path
                 ) -> tuple[dict[str, str], list[str]]:
        """The environment every container of an instance gets and the mounts of its files (`own_env`: what the
        document sets, kept even where the host's value means nothing inside)."""
        env = {k: v for k, v in spec.env.items() if k not in HOST_ONLY or k in own_env}
        env["FIELDGATE_FILES"] = FILES_MOUNT
        area = spec.env.get("FIELDGATE_FILES_DIR")
        mounts = ["-v", f"{files_dir}:{FILES_MOUNT}:ro"]
        if area:
            Path(area).mkdir(parents=True, exist_ok=True)  # the engine refuses to mount what is not there
            mounts += ["-v", f"{area}:{AREA_MOUNT}:ro"]  # the node's files area, read-only
            env["FIELDGATE_FILES_DIR"] = AREA_MOUNT
        return env, mounts

    def labels(self, spec: InstanceSpec) -> list[str]:
        workload = spec.workload
        return ["--label", f"{LABEL_OWNER}={self.owner}",
                "--label", f"{LABEL_WORKLOAD}={workload.namespace}/{workload.name}",
                "--label", f"{LABEL_INSTANCE}={spec.instance}", "--label", f"{LABEL_VERSION}={spec.version}"]

    def entrypoint(self, command: list[str]) -> tuple[list[str], list[str]]:
        """The `--entrypoint` arguments of `command` and what of it goes before the args."""
        if command and self.engine is not None and self.engine.is_podman:
            return ["--entrypoint", json.dumps(command)], []
        if command:  # docker takes one executable as entrypoint; the rest go before the args
            return ["--entrypoint", command[0]], command[1:]
        return [], []

    @staticmethod
    def engine_env(args: list[str], env: dict[str, str]) -> dict[str, str]:
        """Add the `-e` arguments of `env` to `args`; the environment the engine runs with (values stay off the
        command line)."""
        engine_env = dict(os.environ)
        for key, value in env.items():
            if key in engine_env:  # the engine needs its own value of this one: pass the app's on the command line
                args += ["-e", f"{key}={value}"]
            else:
                args += ["-e", key]
                engine_env[key] = value
        return engine_env

    def inside_services(self, spec: InstanceSpec) -> bool:
        """Whether the node's services are opened in the container's own network namespace before it starts: a
        bridge network, and podman (whose `init` makes the namespace without starting the app)."""
        return (spec.services is not None and spec.workload.network == "ports" and self.engine is not None
                and self.engine.is_podman and not spec.services.namespace_problem())

    def run_args(self, spec: InstanceSpec, files_dir: Path, verb: str = "run") -> tuple[list[str], dict[str, str]]:
        """The `run` (or `create`) arguments and the environment the engine passes on (values stay off the command
        line)."""
        workload = spec.workload
        env, file_mounts = self.base_env(spec, workload.env, files_dir)
        args = [verb, "--name", self.container_name(spec), *self.labels(spec),
                "--stop-timeout", str(math.ceil(float(workload.stop_grace))), *file_mounts]
        if self.engine is not None and self.engine.is_podman:
            args.append("--replace")
        if workload.network == "ports":
            address = publish_address()
            for i, port in enumerate(workload.ports):
                host_port = spec.ports[port.name]
                inside = port.container_port or host_port
                args += ["-p", f"{address + ':' if address else ''}{host_port}:{inside}/{port.protocol}"]
                env[f"FIELDGATE_PORT_{port.name.upper().replace('-', '_')}"] = str(inside)
                if i == 0:
                    env["PORT"] = str(inside)
            if self.inside_services(spec) and (dns := inside_dns(spec)):  # the services in its own namespace
                args += ["--dns", dns]
                env["FIELDGATE_DNS"] = f"{dns}:53"
        else:
            args += ["--network", workload.network]
            dns_host, _, dns_port = spec.env.get("FIELDGATE_DNS", "").rpartition(":")
            if workload.network == "host" and dns_host and dns_port == "53":  # the node's services by name
                args += ["--dns", dns_host]
        args += limit_args(workload.limits)
        if workload.working_dir:
            args += ["-w", workload.working_dir]
        args += security_args(workload)
        for volume in workload.volumes:
            mount = volume.mount_path or f"/run/fieldgate/volumes/{volume.name}"
            args += ["-v", f"{spec.volumes[volume.name]}:{mount}:{'ro' if volume.read_only else 'rw'}"]
            env[f"FIELDGATE_VOLUME_{volume.name.upper().replace('-', '_')}"] = mount
        entrypoint, command = self.entrypoint(list(workload.command))
        args += entrypoint
        engine_env = self.engine_env(args, env)
        return [*args, workload.image or "", *command, *workload.args], engine_env

    async def start(self, spec: InstanceSpec) -> Instance:
        engine = self._engine()
        await self.prepare(spec.workload)
        files_dir = write_files(spec)
        own_files(spec.work_dir, spec.workload)
        with contextlib.suppress(OSError):
            self.marker.touch()
        if spec.workload.is_pod:
            return await self.start_pod(engine, spec, files_dir)
        if self.inside_services(spec):
            return await self.start_with_services(engine, spec, files_dir)
        args, env = self.run_args(spec, files_dir)
        try:
            process = await asyncio.create_subprocess_exec(
                str(engine.path), *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise WorkloadError(f"cannot run {engine.path}: {exc.strerror or exc}") from exc
        return await self.started(ContainerInstance(engine, process, spec, self.container_name(spec),
                                                    publish_address()))

    async def start_with_services(self, engine: Engine, spec: InstanceSpec, files_dir: Path) -> Instance:
        """Create the container and its network namespace (`create`, `init`), open the node's services inside it,
        then start it attached: the app finds them from its first instruction on."""
        name = self.container_name(spec)
        node_services = spec.services
        if node_services is None:
            raise WorkloadError("the node's services are not there to open inside the container")
        args, env = self.run_args(spec, files_dir, verb="create")
        services: NamespaceServices | None = None
        try:
            await engine.step(*args, env=env)
            await engine.step("init", name)
            found = await engine.call("inspect", "--format", INSPECT_STARTED, name, check=False)
            pid, *addresses = (found.out.split() if found.code == 0 else []) or [""]
            if not (pid.isdigit() and int(pid) > 0):
                raise WorkloadError(f"{engine.name} init left container {name} without a process")
            services = await node_services.attach_namespace(
                int(pid), f"{spec.workload.namespace}/{spec.workload.name}",
                next((a for a in addresses if is_address(a)), ""), own_ports(spec))
            process = await asyncio.create_subprocess_exec(
                str(engine.path), "start", "--attach", name, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except BaseException as exc:
            if services is not None:
                services.close()
            with contextlib.suppress(WorkloadError):
                await asyncio.shield(engine.call(*engine.remove_args(name), check=False))
            if isinstance(exc, OSError):
                raise WorkloadError(f"cannot run {engine.path}: {exc.strerror or exc}") from exc
            raise
        instance = ContainerInstance(engine, process, spec, name, publish_address())
        instance.services = services
        instance.verb = "start"
        return await self.started(instance)

    async def started(self, instance: ContainerInstance) -> ContainerInstance:
        """The instance once it runs; WorkloadError when it did not start in time or the engine could not run it."""
        try:
            await instance.wait_started()
        except TimeoutError:
            await instance.stop(1.0, f"did not start within {STARTED_TIMEOUT:g}s")
            raise WorkloadError(f"container {instance.container} did not start within {STARTED_TIMEOUT:g}s "
                                f"({last_line(chr(10).join(instance.stderr_tail).encode())})") from None
        if instance.pid is None:  # ended before it was seen running: an engine error is no start at all
            ended = await instance.wait()
            if instance.engine_failed:
                raise WorkloadError(ended.describe())
        return instance

    # --- pods ---------------------------------------------------------------------------------------------------

    def member_args(self, spec: InstanceSpec, pod: PodInstance, container: Container, name: str,
                    files_dir: Path) -> tuple[list[str], dict[str, str]]:
        """The `run` arguments of one container of a pod and the environment the engine passes on."""
        workload = spec.workload
        env, file_mounts = self.base_env(spec, {**workload.env, **container.env}, files_dir)
        args = ["run", "--name", name, "--pod", pod.name, *self.labels(spec),
                "--label", f"{LABEL_CONTAINER}={container.name}",
                "--stop-timeout", str(math.ceil(float(workload.stop_grace))), *file_mounts, "--replace"]
        ports = workload.all_ports
        first = container.ports[0] if container.ports else ports[0] if ports else None
        for port in ports:
            inside = port.container_port or spec.ports[port.name]
            env[f"FIELDGATE_PORT_{port.name.upper().replace('-', '_')}"] = str(inside)
            if port is first:
                env["PORT"] = str(inside)
        if dns := inside_dns(spec):  # the responder answers at port 53 in the pod's namespace
            env["FIELDGATE_DNS"] = f"{dns}:53"
        env.update(container.env)
        args += limit_args(container.limits)
        working_dir = container.working_dir or workload.working_dir
        if working_dir:
            args += ["-w", working_dir]
        args += security_args(workload, container.security)
        mounts, volume_env = member_mounts(spec, container)
        args += mounts
        env.update(volume_env)
        entrypoint, command = self.entrypoint(list(container.command))
        args += entrypoint
        engine_env = self.engine_env(args, env)
        return [*args, container.image, *command, *container.args], engine_env

    async def run_member(self, spec: InstanceSpec, pod: PodInstance, container: Container, name: str
                         ) -> ContainerInstance:
        """Run one container in the pod, attached; returns once it runs (its pid known) or has ended."""
        engine = self._engine()
        args, env = self.member_args(spec, pod, container, name, spec.work_dir / "files")
        try:
            process = await asyncio.create_subprocess_exec(
                str(engine.path), *args, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise WorkloadError(f"cannot run {engine.path}: {exc.strerror or exc}") from exc
        instance = ContainerInstance(engine, process, spec, name, publish_address(), log_as=container.name)
        instance.memory_limit = container.limits.memory
        try:
            await instance.wait_started()
        except TimeoutError:
            await instance.stop(1.0, f"did not start within {STARTED_TIMEOUT:g}s")
            raise WorkloadError(f"container {container.name} did not start within {STARTED_TIMEOUT:g}s "
                                f"({last_line(chr(10).join(instance.stderr_tail).encode())})") from None
        return instance

    async def start_pod(self, engine: Engine, spec: InstanceSpec, files_dir: Path) -> PodInstance:
        """Create the pod, run its init containers in order (each must exit 0), then start its app containers."""
        if not engine.is_podman:
            raise WorkloadError(f"a workload with containers runs as a pod, which needs podman ({engine.name} has "
                                "no pods)")
        name = self.container_name(spec)
        pod = PodInstance(self, engine, spec, name, reach_published(publish_address()))
        try:
            await create_pod(self, engine, spec, name)
            pod.infra_pid, pod.address = await pod_address(engine, name)
            await pod.open_services()
            for container in spec.workload.init_containers:
                init = await self.run_member(spec, pod, container, f"{name}-{container.name}")
                ended = await init.wait()
                if ended.failed:
                    raise WorkloadError(f"init container {container.name} {ended.describe()}")
                if spec.event is not None:
                    await spec.event("initialized", f"init container {container.name} {ended.describe()}")
            await pod.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._abandon(pod))
            raise
        return pod

    async def _abandon(self, pod: PodInstance) -> None:
        pod.close_services()
        await pod.stop(0.0, "the pod did not start")
        await self.remove_pod(pod.engine, pod.name)

    async def remove_pod(self, engine: Engine, name: str) -> None:
        with contextlib.suppress(WorkloadError):
            await engine.call("pod", "rm", "-f", "-t", "0", name, timeout=60, check=False)
