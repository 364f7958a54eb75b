"""What runtimes and the workload supervisor share: the runtime interface, one instance's spec and its exit."""

from __future__ import annotations

import abc
import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from gateway.errors import WorkloadError
from gateway.resources.schema import Workload
from gateway.workloads.figures import Counters, process_tree

EVENTS = ("scheduled", "started", "ready", "unhealthy", "restarted", "failed", "stopped", "post-start", "pre-stop",
          "initialized")


class LogSink(Protocol):
    """Takes one line of an instance's log: its stream, and the container of a pod it came from."""

    def __call__(self, stream: str, line: str, container: str = "") -> None: ...


class NamespaceServices(Protocol):
    """The node's services opened in a container's network namespace; closed when the container has ended."""

    problem: str  # why the namespace has none of them (no privilege to enter it), "" when it has them

    def close(self) -> None: ...


class NodeServices(Protocol):
    """What a runtime may ask of the node's services (gateway.services.mesh): to open them, and the DNS responder, in
    the network namespace of a process of a container (before its app starts), with `owner` (the workload) for the
    log, `client` (the container's own address) as its client address, and `reserved`: the (port, `TCP`/`UDP`) the
    app listens on there, which no service takes from it."""

    async def attach_namespace(self, pid: int, owner: str, client: str = "",
                               reserved: frozenset[tuple[int, str]] = frozenset()) -> NamespaceServices: ...

    def namespace_problem(self) -> str:
        """Why no container's namespace can get the services (the gateway may not enter them), "" when they can:
        such a container keeps the engine's own DNS rather than one that nothing answers in its namespace."""
        ...


EventSink = Callable[[str, str], Awaitable[None]]  # (event, reason) of one instance, for a runtime's own steps
READ_CHUNK = 64 << 10  # also the longest line: a longer one is passed on in pieces


@dataclass
class InstanceSpec:
    """Everything a runtime needs to start one instance of a workload."""

    workload: Workload
    instance: str  # `<name>-<generation>-<replica>`, unique on the node
    version: int
    env: dict[str, str]  # the document's env, resolved references and the FIELDGATE_* variables
    files: dict[str, tuple[bytes, bool]]  # relative path -> (contents, secret)
    ports: dict[str, int]  # port name -> host port (0 in the document resolved to a free one)
    work_dir: Path  # the instance's own directory in the data dir (files/ holds `files`)
    log: LogSink
    volumes: dict[str, Path] = field(default_factory=dict)  # volume name -> its host path (gateway.workloads.mounts)
    # fenced (gateway.hookspecs.workload_fence): it must not outlive the gateway, whose lease let it run
    bound_to_gateway: bool = False
    event: EventSink | None = None  # a runtime's own steps (a pod's init containers, a container restarted alone)
    services: NodeServices | None = None  # the node's services, for instances with a network namespace of their own


@dataclass
class Exit:
    """How an instance ended: `code` or `signal`, `oom` when it went past its memory limit."""

    code: int | None = None
    signal: int | None = None
    oom: bool = False
    reason: str = ""

    @property
    def failed(self) -> bool:
        return self.oom or self.code != 0

    def describe(self) -> str:
        if self.reason:
            return self.reason
        if self.signal is not None:
            return f"killed by signal {self.signal}"
        return f"exited with code {self.code}"


class Instance(abc.ABC):
    """A started instance, as a runtime hands it to the supervisor."""

    pid: int | None = None
    memory_bytes: int | None = None  # last measured, when the runtime measures it

    def containers(self) -> list[dict[str, Any]]:
        """The containers of a pod with their state and restarts, for the status; empty for one process or image."""
        return []

    def container_target(self, container: str) -> object:
        """What runs or addresses the health checks of one container of a pod (gateway.workloads.health)."""
        return self

    async def restart_container(self, container: str, reason: str) -> bool:
        """Restart one container of a pod alone (its check failed); False when it cannot: the instance restarts."""
        return False

    def counters(self) -> Counters | None:
        """Its resource counters now (gateway.workloads.figures; blocking, called in a thread): by default those of
        the process tree of `pid`; None when it has no process (yet)."""
        return process_tree(self.pid) if self.pid else None

    @abc.abstractmethod
    async def wait(self) -> Exit:
        """Wait until the instance has ended."""

    @abc.abstractmethod
    async def stop(self, grace: float, reason: str = "") -> None:
        """Ask it to end (SIGTERM or the like), force it after `grace` seconds; returns once it has ended."""


class Runtime(abc.ABC):
    """Runs instances of workloads; plugins return subclasses from `register_runtimes()`."""

    name: ClassVar[str]

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def unavailable(self) -> str | None:
        """Why this runtime cannot run anything on this node (its workloads fail with it), or None."""
        return None

    def describe(self) -> dict[str, str]:
        """How it runs instances and enforces limits here, for the status page."""
        return {}

    async def prepare(self, workload: Workload) -> None:
        """Get ready to start `workload` (a container runtime pulls its image) while its old version still runs;
        raise gateway.errors.WorkloadError to keep the old version running."""
        return None

    @abc.abstractmethod
    async def start(self, spec: InstanceSpec) -> Instance:
        """Start one instance; raise gateway.errors.WorkloadError when it cannot start."""

    async def close(self) -> None:
        """Clean up once the gateway has stopped every instance (it is stopping); errors are logged, not raised."""
        return None


@dataclass
class RuntimeRegistry:
    """The runtimes the plugins registered, by name, with the ones that failed to load."""

    runtimes: dict[str, Runtime] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def why_not(self, name: str) -> str | None:
        """None when `name` can run workloads, else the reason for the workload's status."""
        runtime = self.runtimes.get(name)
        if runtime is None:
            known = ", ".join(sorted(self.runtimes)) or "none"
            extra = f": {self.problems[name]}" if name in self.problems else ""
            return f"runtime {name!r} is not available on this node (loaded: {known}){extra}"
        reason = runtime.unavailable()
        return f"runtime {name!r} cannot run here: {reason}" if reason else None


def mib(size: int) -> str:
    return f"{size / (1 << 20):.0f} MiB"


def write_files(spec: InstanceSpec) -> Path:
    """Write the instance's files afresh into `files/` of its work dir and return that directory."""
    files_dir = spec.work_dir / "files"
    try:
        shutil.rmtree(files_dir, ignore_errors=True)
        files_dir.mkdir(parents=True, exist_ok=True)
        for relative, (content, secret) in spec.files.items():
            path = files_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
            with os.fdopen(fd, "wb") as file:
                file.write(content)
    except OSError as exc:
        raise WorkloadError(f"cannot write the files of {spec.instance}: {exc}") from exc
    return files_dir


async def read_lines(stream: asyncio.StreamReader, on_line: Callable[[bytes], None]) -> None:
    """Pass each line of `stream` (without its newline) to `on_line` until the stream ends."""
    pending = b""
    while chunk := await stream.read(READ_CHUNK):
        *lines, pending = (pending + chunk).split(b"\n")
        if len(pending) > READ_CHUNK:
            lines.append(pending)
            pending = b""
        for raw in lines:
            on_line(raw)
    if pending:
        on_line(pending)
