"""Pods: a workload's `containers` run in one podman pod (one network namespace, so they reach each other on
localhost and the pod publishes their ports), after its `init_containers` have each run to exit code 0. Every
container is attached, so its output is the workload's log tagged with its name; one that ends is restarted alone
by the workload's restart policy, with the workload's backoff, and counted.

On a bridge network the node's services are opened in the pod's network namespace (its infra container's) once the
pod is created, before its first container starts, and its containers get the DNS responder as their DNS server
(`pod create --dns`); they close when the pod is removed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fieldgate_container.engine import Engine, Result
from gateway.errors import WorkloadError
from gateway.resources.schema import Container
from gateway.workloads.figures import Counters, cgroup_counters, cgroup_dirs, process_tree
from gateway.workloads.health import HOST
from gateway.workloads.model import Exit, Instance, InstanceSpec, NamespaceServices

if TYPE_CHECKING:
    from fieldgate_container.runtime import ContainerInstance, ContainerRuntime

log = logging.getLogger(__name__)
LABEL_CONTAINER = "io.fieldgate.container"
BACKOFF_RESET_AFTER = 60.0  # a container that ran this long starts its backoff over


@dataclass
class Member:
    """One app container of a pod: the container running now, and what happened to it so far."""

    container: Container
    name: str  # the engine's name of it
    current: ContainerInstance | None = None
    state: str = "waiting"  # waiting, running, restarting, exited, failed
    restarts: int = 0
    last_exit: str = ""
    started_at: float | None = None
    exit: Exit | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def describe(self) -> dict[str, Any]:
        return {"name": self.container.name, "image": self.container.image, "state": self.state,
                "restarts": self.restarts, "last_exit": self.last_exit, "started_at": self.started_at,
                "pid": self.current.pid if self.current is not None else None}


class MemberChecks:
    """Where one container's health checks run: exec checks in the container, http and tcp at the pod's ports."""

    def __init__(self, pod: PodInstance, member: Member) -> None:
        self.pod = pod
        self.member = member

    async def exec_check(self, command: list[str]) -> str | None:
        current = self.member.current
        if current is None:
            return f"container {self.member.container.name} is not running"
        return await current.exec_check(command)

    def check_address(self, port: int | str) -> tuple[str, int] | None:
        return self.pod.check_address(port)


def check_address(spec: InstanceSpec, published_host: str, address: str | None,
                  port: int | str) -> tuple[str, int] | None:
    """Where http and tcp checks reach an app (one container or a pod): a named port or a mapped container port at
    its published host port; on the host's network the port itself; else the port at the container's (or pod's) own
    address."""
    workload = spec.workload
    if workload.network == "none":
        return None
    if isinstance(port, str):
        host_port = spec.ports.get(port)
        if host_port is None:
            return None
        return (HOST if workload.network == "host" else published_host), host_port
    if workload.network == "host":
        return HOST, port
    for mapping in workload.all_ports:
        host_port = spec.ports.get(mapping.name, 0)
        if mapping.protocol == "tcp" and host_port and (mapping.container_port or host_port) == port:
            return published_host, host_port
    return (address, port) if address else (published_host, port)


class PodInstance(Instance):
    """The pod of one instance: its app containers, each kept running by the restart policy."""

    def __init__(self, runtime: ContainerRuntime, engine: Engine, spec: InstanceSpec, name: str,
                 published_host: str) -> None:
        self.runtime = runtime
        self.engine = engine
        self.spec = spec
        self.name = name
        self.published_host = published_host
        self.address = ""  # the pod's own IP address, when it has one
        self.infra_pid: int | None = None
        self.services: NamespaceServices | None = None  # the node's services in the pod's network namespace
        self.members = {c.name: Member(c, f"{name}-{c.name}") for c in spec.workload.containers}
        self.stopping = False
        self.stop_reason = ""
        self._tasks: list[asyncio.Task[None]] = []
        self._ended: asyncio.Task[Exit] | None = None

    # --- what the supervisor asks ------------------------------------------------------------------------------

    def containers(self) -> list[dict[str, Any]]:
        return [member.describe() for member in self.members.values()]

    def container_target(self, container: str) -> object:
        return MemberChecks(self, self.members[container]) if container in self.members else self

    def first(self) -> ContainerInstance | None:
        return next(iter(self.members.values())).current

    def exec_argv(self, command: list[str]) -> list[str]:
        """Lifecycle hooks run in the first app container."""
        return [str(self.engine.path), "exec", next(iter(self.members.values())).name, *command]

    async def exec_check(self, command: list[str]) -> str | None:
        current = self.first()
        return "the first container is not running" if current is None else await current.exec_check(command)

    def check_address(self, port: int | str) -> tuple[str, int] | None:
        """Where http and tcp checks reach a pod's containers (see `check_address`)."""
        return check_address(self.spec, self.published_host, self.address, port)

    def counters(self) -> Counters | None:
        """The counters of the pod's cgroup (every container of it, the parent of theirs)."""
        current = next((m.current for m in self.members.values() if m.current is not None and m.current.pid), None)
        if current is None or current.pid is None:
            return None
        dirs = cgroup_dirs(current.pid)
        parents = {controller: path.parent for controller, path in dirs.items()}
        return (cgroup_counters(parents, current.pid) if parents else None) or process_tree(current.pid)

    # --- running ------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every app container (an engine error starting one is no start at all) and keep them running."""
        for member in self.members.values():
            instance = await self.runtime.run_member(self.spec, self, member.container, member.name)
            if instance.pid is None:
                ended = await instance.wait()
                raise WorkloadError(f"container {member.container.name}: {ended.describe()}")
            self._running(member, instance)
        self.pid = next(iter(self.members.values())).current.pid  # type: ignore[union-attr]
        self._tasks = [asyncio.create_task(self._keep(member), name=f"pod container {member.name}")
                       for member in self.members.values()]
        self._ended = asyncio.create_task(self._wait_all())

    def _running(self, member: Member, instance: ContainerInstance) -> None:
        member.current, member.state, member.started_at, member.exit = instance, "running", time.time(), None

    async def _event(self, event: str, reason: str) -> None:
        if self.spec.event is not None:
            with contextlib.suppress(Exception):
                await self.spec.event(event, reason)

    async def _keep(self, member: Member) -> None:
        """Restart the container by the workload's restart policy until the pod stops."""
        workload = self.spec.workload
        attempt = 0
        while True:
            started = time.monotonic()
            exit_ = await member.current.wait() if member.current is not None else member.exit or Exit(code=1)
            member.last_exit, member.exit = exit_.describe(), exit_
            member.state = "failed" if exit_.failed else "exited"
            if self.stopping:
                return
            policy = workload.restart
            if policy == "never" or (policy == "on-failure" and not exit_.failed):
                await self._event("failed" if exit_.failed else "stopped",
                                  f"container {member.container.name}: {exit_.describe()}")
                return
            if time.monotonic() - started > BACKOFF_RESET_AFTER:
                attempt = 0
            delay = min(float(workload.restart_delay) * 2 ** attempt, float(workload.restart_delay_max))
            attempt += 1
            member.state = "restarting"
            member.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await member.wake.wait()
            if self.stopping:
                member.state = "failed" if exit_.failed else "exited"
                return
            member.restarts += 1
            await self._event("restarted", f"container {member.container.name}: restart {member.restarts} after: "
                                           f"{exit_.describe()}")
            try:
                instance = await self.runtime.run_member(self.spec, self, member.container, member.name)
            except WorkloadError as exc:  # the engine could not run it: tried again after the backoff
                member.current, member.exit = None, Exit(reason=f"cannot start: {exc}")
                continue
            self._running(member, instance)  # one that ended at once is seen so by the next wait

    async def restart_container(self, container: str, reason: str) -> bool:
        """Stop one container (its health check failed); the restart policy brings it back."""
        member = self.members.get(container)
        if member is None or self.spec.workload.restart == "never":
            return False
        if member.current is not None:
            await member.current.stop(float(self.spec.workload.stop_grace), reason)
        return True

    async def _wait_all(self) -> Exit:
        await asyncio.gather(*self._tasks, return_exceptions=True)
        failed = next((m for m in self.members.values() if m.exit is not None and m.exit.failed), None)
        if failed is not None and failed.exit is not None:
            exit_ = Exit(code=failed.exit.code, signal=failed.exit.signal, oom=failed.exit.oom,
                         reason=f"container {failed.container.name}: {failed.exit.describe()}")
        else:
            exit_ = Exit(code=0)
        if self.stop_reason and not exit_.oom:
            exit_.reason = f"{self.stop_reason} ({exit_.describe()})"
        self.close_services()
        await self.runtime.remove_pod(self.engine, self.name)
        return exit_

    async def open_services(self) -> None:
        """Open the node's services in the pod's network namespace (a bridge network; its infra container runs)."""
        workload = self.spec.workload
        if self.spec.services is None or workload.network != "ports":
            return
        if self.infra_pid is None:
            log.warning("services: pod %s has no infra process: its containers run without the node's services",
                        self.name)
            return
        from fieldgate_container.runtime import own_ports  # the runtime module imports this one

        self.services = await self.spec.services.attach_namespace(
            self.infra_pid, f"{workload.namespace}/{workload.name}", self.address, own_ports(self.spec))

    def close_services(self) -> None:
        if self.services is not None:
            self.services.close()
            self.services = None

    async def wait(self) -> Exit:
        if self._ended is None:
            return Exit(code=0)
        return await asyncio.shield(self._ended)

    async def stop(self, grace: float, reason: str = "") -> None:
        """Stop every container of the pod (SIGTERM, SIGKILL after `grace`), then remove the pod."""
        first = not self.stopping
        self.stopping = True
        self.stop_reason = self.stop_reason or reason
        for member in self.members.values():
            member.wake.set()
        if first:
            with contextlib.suppress(WorkloadError):
                await self.engine.call("pod", "stop", "-t", str(math.ceil(grace)), self.name, timeout=grace + 15,
                                       check=False)
        await asyncio.gather(*(m.current.stop(grace, reason) for m in self.members.values()
                               if m.current is not None), return_exceptions=True)
        await self.wait()


async def create_pod(runtime: ContainerRuntime, engine: Engine, spec: InstanceSpec, name: str) -> None:
    """`<engine> pod create` with the workload's network, published ports and limits (for the whole pod)."""
    from fieldgate_container.runtime import inside_dns, limit_args, publish_address  # it imports this module

    workload = spec.workload
    await engine.call("pod", "rm", "-f", "-t", "0", name, check=False)
    args = ["pod", "create", "--name", name, "--infra-name", f"{name}-infra", *runtime.labels(spec)]
    if workload.network == "ports":
        address = publish_address()
        for port in workload.all_ports:
            host_port = spec.ports[port.name]
            inside = port.container_port or host_port
            args += ["-p", f"{address + ':' if address else ''}{host_port}:{inside}/{port.protocol}"]
        if dns := inside_dns(spec):  # the node's services are opened in the pod's namespace
            args += ["--dns", dns]
    else:
        args += ["--network", workload.network]
    args += limit_args(workload.limits)
    await engine.call(*args)
    await engine.call("pod", "start", name)


async def pod_address(engine: Engine, name: str) -> tuple[int | None, str]:
    """The infra container's pid and the pod's own IP address ("" on the host's network or none)."""
    found = Result(1, "", "")
    with contextlib.suppress(WorkloadError):
        found = await engine.call("inspect", "--format", "{{.State.Pid}} {{.NetworkSettings.IPAddress}} "
                                  "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", f"{name}-infra",
                                  check=False)
    pid, *addresses = (found.out.split() if found.code == 0 else []) or [""]
    from fieldgate_container.runtime import is_address

    return (int(pid) if pid.isdigit() and int(pid) > 0 else None), next((a for a in addresses if is_address(a)), "")


def container_env_name(name: str) -> str:
    return name.upper().replace("-", "_")


def member_mounts(spec: InstanceSpec, container: Container) -> tuple[list[str], dict[str, str]]:
    """The `-v` arguments of the volumes every container of the pod mounts (those with a mount_path) and of the
    container's own volume_mounts, and the FIELDGATE_VOLUME_<NAME> variables of them."""
    args: list[str] = []
    env: dict[str, str] = {}
    workload = spec.workload
    for volume in workload.volumes:
        if volume.mount_path:
            args += ["-v", f"{spec.volumes[volume.name]}:{volume.mount_path}:{'ro' if volume.read_only else 'rw'}"]
            env[f"FIELDGATE_VOLUME_{container_env_name(volume.name)}"] = volume.mount_path
    for mount in container.volume_mounts:
        args += ["-v", f"{spec.volumes[mount.name]}:{mount.mount_path}:{'ro' if mount.read_only else 'rw'}"]
        env[f"FIELDGATE_VOLUME_{container_env_name(mount.name)}"] = mount.mount_path
    return args, env
