"""One replica of a workload: start it with its runtime, gate `ready` on its health check, restart it by the
restart policy with exponential backoff, and report every step as an event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.errors import FieldgateError, WorkloadError
from gateway.resources.schema import HealthCheck, Workload
from gateway.workloads.health import probe
from gateway.workloads.hooks import run_hook
from gateway.workloads.model import Exit, Instance, InstanceSpec

if TYPE_CHECKING:
    from gateway.workloads.supervisor import WorkloadRunner

log = logging.getLogger(__name__)
BACKOFF_RESET_AFTER = 60.0  # an instance that ran this long starts its backoff over
STARTUP_GRACE = 10.0  # an instance not yet ready is not judged unhealthy before this (a slow start is no failure)
TERMINAL = ("exited", "failed", "oom", "stopped")


class InstanceRunner:
    def __init__(self, owner: WorkloadRunner, spec: Workload, version: int, replica: int, generation: int,
                 epoch: int, ports: dict[str, int]) -> None:
        self.owner = owner
        self.spec = spec
        self.version = version
        self.replica = replica
        self.epoch = epoch
        self.id = f"{spec.name}-{generation}-{replica}"
        self.ports = ports
        self.state = "pending"
        self.reason = ""
        self.since = time.time()
        self.restarts = 0
        self.pid: int | None = None
        self.started_at: float | None = None
        self.last_exit = ""
        self.ready = False
        self.stopping = False
        self.handle: Instance | None = None
        self.spec_used: InstanceSpec | None = None  # the running instance's spec, for its hooks
        self.containers: list[dict[str, Any]] = []  # a pod's containers, as last seen
        self._ready_event = asyncio.Event()
        self._ended_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- control ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._guarded(), name=f"workload instance {self.id}")

    async def stop(self, reason: str) -> None:
        """Stop the instance (SIGTERM, SIGKILL after stop_grace) and its restarts; returns once it has ended."""
        first = not self.stopping
        self.stopping = True
        self._wake.set()
        if first and self.handle is not None and self.spec_used is not None:
            await self._hook("pre-stop", self.handle, self.spec_used)
        if self.handle is not None:
            with contextlib.suppress(FieldgateError, OSError):
                await self.handle.stop(float(self.spec.stop_grace), reason)
        if self._task is not None:
            try:
                async with asyncio.timeout(float(self.spec.stop_grace) + 5):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self.state not in TERMINAL:
            self._set("stopped", reason)

    async def wait_ready(self, timeout: float) -> bool:
        """True once ready; False when it ended (for good) or the timeout passed first."""
        ready = asyncio.ensure_future(self._ready_event.wait())
        ended = asyncio.ensure_future(self._ended_event.wait())
        try:
            await asyncio.wait({ready, ended}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            ended.cancel()
        return self.ready

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def describe(self) -> dict[str, Any]:
        memory = self.handle.memory_bytes if self.handle is not None else None
        figures = self.owner.manager.figures.of(self.id)
        return {"id": self.id, "replica": self.replica, "version": self.version, "state": self.state,
                "reason": self.reason, "since": self.since, "ready": self.ready, "pid": self.pid,
                "restarts": self.restarts, "started_at": self.started_at, "last_exit": self.last_exit,
                "ports": self.ports, "memory_bytes": memory,
                "containers": self.handle.containers() if self.handle is not None else self.containers,
                "figures": figures.latest if figures is not None and self.handle is not None else None}

    # --- the loop ---------------------------------------------------------------------------------------------

    def _set(self, state: str, reason: str = "") -> None:
        if state != self.state or reason != self.reason:
            self.state, self.reason, self.since = state, reason, time.time()

    async def _event(self, event: str, reason: str = "") -> None:
        await self.owner.event(event, self.id, reason)

    async def _guarded(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must show as the instance's status, not vanish with the task
            log.exception("workload instance %s: the supervisor failed", self.id)
            self._set("failed", f"supervisor error: {type(exc).__name__}: {exc}")
            with contextlib.suppress(Exception):
                await self._event("failed", self.reason)
        finally:
            self.ready = False
            self._ended_event.set()

    async def _run(self) -> None:
        attempt = 0
        manager = self.owner.manager
        while not self.stopping:
            why = manager.registry.why_not(self.spec.runtime)
            if why is not None:
                self._set("failed", why)
                await self._event("failed", why)
                return
            self._set("starting")
            started = time.monotonic()
            exit_: Exit
            try:
                spec = manager.instance_spec(self)
                handle = await manager.registry.runtimes[self.spec.runtime].start(spec)
            except WorkloadError as exc:
                exit_ = Exit(reason=f"cannot start: {exc}")
            else:
                exit_ = await self._supervise(handle, spec)
            if self.stopping:
                self._set("stopped", exit_.describe())
                await self._event("stopped", exit_.describe())
                return
            reason = exit_.describe()
            self.last_exit = reason
            final = "oom" if exit_.oom else "failed" if exit_.failed else "exited"
            await self._event("failed" if exit_.failed else "stopped", reason)
            policy = self.spec.restart
            if policy == "never" or (policy == "on-failure" and not exit_.failed):
                self._set(final, reason)
                return
            if time.monotonic() - started > BACKOFF_RESET_AFTER:
                attempt = 0
            delay = min(float(self.spec.restart_delay) * 2 ** attempt, float(self.spec.restart_delay_max))
            attempt += 1
            self._set("restarting", f"{reason}; restarting in {delay:g}s")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            if self.stopping:
                break
            self.restarts += 1
            await self._event("restarted", f"restart {self.restarts} after: {reason}")
        self._set("stopped", "stopped while waiting to restart")
        await self._event("stopped", self.reason)

    async def _hook(self, which: str, handle: Instance, spec: InstanceSpec) -> bool:
        """Run the post-start or pre-stop hook when the workload has one, as an event; False when it failed."""
        hook = self.spec.hooks.post_start if which == "post-start" else self.spec.hooks.pre_stop
        if hook is None:
            return True
        security = self.spec.secured
        try:
            ok, what = await run_hook(hook, handle, self.ports, spec.env, self.spec.working_dir or
                                      str(spec.work_dir / "files"), security.run_as_user, security.run_as_group)
        except (OSError, ValueError) as exc:
            ok, what = False, str(exc)
        await self._event(which, f"{hook.type} hook {'succeeded' if ok else 'failed'}: {what}")
        return ok

    async def _supervise(self, handle: Instance, spec: InstanceSpec) -> Exit:
        self.handle, self.pid, self.started_at = handle, handle.pid, time.time()
        self.spec_used = spec
        self._set("running")
        await self._event("started", f"pid {handle.pid}" if handle.pid else "")
        if self.stopping:  # stopped while it was starting
            await handle.stop(float(self.spec.stop_grace), "stopped")
        elif not await self._hook("post-start", handle, spec):
            await handle.stop(float(self.spec.stop_grace), "its post_start hook failed")
        health = asyncio.create_task(self._health(handle, spec))
        try:
            return await handle.wait()
        except asyncio.CancelledError:  # never leave the app running without its supervisor
            await asyncio.shield(handle.stop(1.0, "stopped"))
            raise
        finally:
            health.cancel()
            await asyncio.gather(health, return_exceptions=True)
            self.ready = False
            self._ready_event.clear()
            self.containers = handle.containers()
            self.handle = None
            self.spec_used = None
            self.owner.cleanup_instance_dir(self)

    async def _became_ready(self, reason: str) -> None:
        self.ready = True
        self._ready_event.set()
        self._set("ready")
        await self._event("ready", reason)
        self.owner.changed()

    async def _health(self, handle: Instance, spec: InstanceSpec) -> None:
        """Gate `ready` on the workload's check, or on every container's check of a pod."""
        checks = [("", self.spec.health)] if self.spec.health is not None else []
        checks += [(c.name, c.health) for c in self.spec.containers if c.health is not None]
        if not checks:
            await self._became_ready("started (no health check)")
            return
        passing = {name: False for name, _ in checks}
        await asyncio.gather(*(self._check(name, check, passing, handle, spec) for name, check in checks))

    async def _check(self, container: str, check: HealthCheck, passing: dict[str, bool], handle: Instance,
                     spec: InstanceSpec) -> None:
        """One check's loop: an unhealthy container of a pod is restarted alone, else the whole instance."""
        await asyncio.sleep(float(check.initial_delay))
        failures = 0
        started = time.monotonic()
        cwd = self.spec.working_dir or str(spec.work_dir / "files")
        target = handle.container_target(container) if container else handle
        while True:
            problem = await probe(check, self.ports, spec.env, cwd, target)
            if problem is None:
                failures = 0
                passing[container] = True
                if not self.ready and all(passing.values()):
                    await self._became_ready(f"{check.type} check passed" if len(passing) == 1 else
                                             "every container's check passed")
            elif self.stopping:  # its containers are going: no check judges them now
                return
            else:
                failures += 1
                starting = not self.ready and time.monotonic() - started < STARTUP_GRACE
                if failures >= check.failure_threshold and not starting:
                    which = f"container {container}: " if container else ""
                    reason = f"unhealthy: {which}{problem} ({failures} checks in a row)"
                    passing[container] = False
                    self.ready = False
                    self._ready_event.clear()
                    self._set("unhealthy", reason)
                    await self._event("unhealthy", reason)
                    self.owner.changed()
                    if container and await handle.restart_container(container, reason):
                        failures, started = 0, time.monotonic()  # it gets its start-up grace again
                        await asyncio.sleep(float(check.initial_delay))
                        continue
                    await handle.stop(float(self.spec.stop_grace), reason)
                    return
            await asyncio.sleep(float(check.interval))
