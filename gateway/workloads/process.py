"""The built-in `process` runtime: every instance is a child process in its own process group, its stdout and
stderr captured line by line, its memory and CPU limited (see gateway.workloads.limits)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import psutil

from gateway.errors import WorkloadError
from gateway.hookspecs import hookimpl
from gateway.workloads import limits
from gateway.workloads.figures import Counters, process_tree
from gateway.workloads.model import Exit, Instance, InstanceSpec, LogSink, Runtime, mib, read_lines, write_files
from gateway.workloads.mounts import own_files

log = logging.getLogger(__name__)
MEMORY_SAMPLE_EVERY = 0.2
PID_FILE = "pid"
OUT_OF_MEMORY = re.compile(r"MemoryError|Cannot allocate memory|std::bad_alloc|out of memory", re.I)


class ProcessInstance(Instance):
    def __init__(self, process: asyncio.subprocess.Process, spec: InstanceSpec,
                 cgroups: limits.CgroupBackend | None, cgroup: limits.InstanceCgroup | None) -> None:
        self.process = process
        self.pid: int = process.pid
        self.spec = spec
        self.cgroups = cgroups
        self.cgroup = cgroup
        self.memory_limit = spec.workload.limits.memory
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self.stop_reason = ""
        self.oom_reason = ""
        self._pumps = [asyncio.create_task(self._pump(process.stdout, "stdout", spec.log)),
                       asyncio.create_task(self._pump(process.stderr, "stderr", spec.log))]
        self._watch = asyncio.create_task(self._watch_memory())
        self._ended = asyncio.create_task(self._wait())

    async def _pump(self, stream: asyncio.StreamReader | None, name: str, sink: LogSink) -> None:
        if stream is None:
            return
        await read_lines(stream, lambda raw: self._line(name, raw, sink))

    def _line(self, stream: str, raw: bytes, sink: LogSink) -> None:
        text = raw.decode(errors="replace").rstrip("\r")
        if stream == "stderr":
            self.stderr_tail.append(text)
        try:
            sink(stream, text)
        except Exception as exc:  # a full disk must not stop the app
            log.warning("workload log of %s: %s", self.spec.instance, exc)

    def _group_processes(self) -> list[psutil.Process]:
        try:
            main = psutil.Process(self.pid)
            return [main, *main.children(recursive=True)]
        except psutil.Error:
            return []

    def _memory_used(self) -> int:
        if self.cgroups is not None and self.cgroup is not None:  # the kernel's own count, and it enforces the limit
            counted = self.cgroups.memory_used(self.cgroup)
            if counted is not None:
                return counted
        used = 0
        for proc in self._group_processes():
            with contextlib.suppress(psutil.Error):
                used += proc.memory_info().rss
        return used

    def counters(self) -> Counters | None:
        """Its process tree's counters, with the memory its cgroup counts when its limits made one."""
        memory = self.cgroups.memory_used(self.cgroup) if self.cgroups is not None and self.cgroup else None
        return process_tree(self.pid, memory)

    async def _watch_memory(self) -> None:
        """Measure the instance's memory for its status; without a cgroup, also stop it above its limit."""
        while self.process.returncode is None:
            used = self.memory_bytes = self._memory_used()
            if self.memory_limit is not None and self.cgroup is None and used > self.memory_limit:
                self.oom_reason = (f"out of memory: used {mib(used)}, above its limit of {mib(self.memory_limit)}; "
                                   "stopped")
                self._signal_group(signal.SIGKILL)
                return
            await asyncio.sleep(MEMORY_SAMPLE_EVERY)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    async def wait(self) -> Exit:
        return await asyncio.shield(self._ended)

    async def _wait(self) -> Exit:
        code = await self.process.wait()
        # Whatever the app left in its group (a child holding the pipes) goes with it.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await asyncio.gather(*self._pumps, return_exceptions=True)
        for task in (*self._pumps, self._watch):
            task.cancel()
        exit_ = Exit(code=code if code >= 0 else None, signal=-code if code < 0 else None)
        if self.cgroups is not None and self.cgroup is not None:
            if self.cgroups.oom_kills(self.cgroup) and self.memory_limit is not None:
                exit_.oom = True
                exit_.reason = f"out of memory: killed by the kernel at its limit of {mib(self.memory_limit)}"
            await asyncio.to_thread(self.cgroups.remove, self.cgroup)
        elif self.oom_reason:
            exit_.oom, exit_.reason = True, self.oom_reason
        elif code != 0 and self.memory_limit is not None and any(OUT_OF_MEMORY.search(t) for t in self.stderr_tail):
            exit_.oom = True
            exit_.reason = (f"out of memory: an allocation failed at the address-space limit "
                            f"({mib(int(self.memory_limit) * 2 + limits.AS_HEADROOM)}) of its memory limit "
                            f"{mib(self.memory_limit)}")
        if self.stop_reason and not exit_.oom:
            exit_.reason = f"{self.stop_reason} ({exit_.describe()})"
        return exit_

    async def stop(self, grace: float, reason: str = "") -> None:
        if self.process.returncode is None:
            self.stop_reason = self.stop_reason or reason
            self._signal_group(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self.process.wait()
            except TimeoutError:
                self._signal_group(signal.SIGKILL)
        await self.wait()


class ProcessRuntime(Runtime):
    """Runs a workload's `command` + `args` as a supervised child process of the gateway."""

    name: ClassVar[str] = "process"

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.cgroups, self.cgroups_reason = limits.select_backend()
        self.reap_leftovers()

    def reap_leftovers(self) -> None:
        """Stop the apps a previous gateway left running when it died (their pid files outlive it)."""
        for pid_file in sorted((self.data_dir / "workloads").glob(f"*/*/instances/*/{PID_FILE}")):
            with contextlib.suppress(OSError, ValueError, psutil.Error):
                pid_text, created = pid_file.read_text().split()
                process = psutil.Process(int(pid_text))
                if abs(process.create_time() - float(created)) < 0.01:  # the same process, not a reused pid
                    log.warning("stopping %s (pid %s), left running by the previous gateway", pid_file.parent.name,
                                pid_text)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(int(pid_text), signal.SIGKILL)
            with contextlib.suppress(OSError):
                pid_file.unlink()

    def describe(self) -> dict[str, str]:
        return limits.describe(self.cgroups, self.cgroups_reason)

    async def close(self) -> None:
        """Remove this gateway's own cgroup level (cgroup v1); the instances' cgroups went with them."""
        if self.cgroups is not None:
            await asyncio.to_thread(self.cgroups.close)

    @staticmethod
    def _prepare(spec: InstanceSpec) -> tuple[list[str], str]:
        """Write the instance's files and check its command and working directory: (argv, cwd)."""
        workload = spec.workload
        files_dir = write_files(spec)
        argv = [*workload.command, *workload.args]
        executable = argv[0]
        if "/" not in executable and shutil.which(executable, path=spec.env.get("PATH")) is None:
            raise WorkloadError(f"command {executable!r} not found in PATH")
        own_files(spec.work_dir, workload)
        cwd = workload.working_dir or str(files_dir)
        if not os.path.isdir(cwd):
            raise WorkloadError(f"working_dir {cwd} is not a directory")
        return argv, cwd

    async def start(self, spec: InstanceSpec) -> Instance:
        workload = spec.workload
        argv, cwd = self._prepare(spec)
        cgroup: limits.InstanceCgroup | None = None
        if self.cgroups is not None and (workload.limits.memory is not None or workload.limits.cpu is not None):
            try:
                cgroup = self.cgroups.create(spec.instance, workload.limits)
            except OSError as exc:
                raise WorkloadError(f"cannot make the cgroup of {spec.instance}: {exc.strerror or exc}") from exc
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, env=spec.env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True,
                preexec_fn=dies_with_parent(limits.preexec(workload.limits, cgroup)) if spec.bound_to_gateway
                else limits.preexec(workload.limits, cgroup), user=workload.secured.run_as_user,
                group=workload.secured.run_as_group,
                extra_groups=[] if workload.secured.run_as_user is not None
                or workload.secured.run_as_group is not None else None)
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            if self.cgroups is not None and cgroup is not None:
                await asyncio.to_thread(self.cgroups.remove, cgroup)
            raise WorkloadError(f"cannot start {argv[0]!r}: {getattr(exc, 'strerror', None) or exc}") from exc
        with contextlib.suppress(OSError, psutil.Error):
            created = psutil.Process(process.pid).create_time()
            (spec.work_dir / PID_FILE).write_text(f"{process.pid} {created}\n")
        return ProcessInstance(process, spec, self.cgroups, cgroup)


PR_SET_PDEATHSIG = 1


def dies_with_parent(then: Callable[[], None]) -> Callable[[], None]:
    """A preexec step that has the kernel SIGKILL the child when the gateway dies (Linux), then runs `then`."""
    libc = ctypes.CDLL(None, use_errno=True)

    def apply() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        then()

    return apply


@hookimpl
def register_runtimes() -> list[type[Runtime]]:
    return [ProcessRuntime]
