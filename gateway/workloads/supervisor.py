"""The workloads of a node: deploy, update (by the workload's strategy: Recreate or RollingUpdate), stop, restart,
roll back and delete, each deployed spec kept as a version and every step as an event in the store."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import ConfigError, NotFound, PluginError, WorkloadError
from gateway.files import files_area
from gateway.resources.schema import Strategy, Workload, dec_hook, enc_hook
from gateway.workloads.accelerators import node_accelerators
from gateway.workloads.figures import WorkloadFigures
from gateway.workloads.history import WorkloadHistory
from gateway.workloads.instance import InstanceRunner
from gateway.workloads.logs import WorkloadLog
from gateway.workloads.model import InstanceSpec, Runtime, RuntimeRegistry
from gateway.workloads.mounts import check_devices, env_name, volume_dirs

if TYPE_CHECKING:
    from gateway.api import GatewayAPI
    from gateway.resources.loader import Config

log = logging.getLogger(__name__)
READY_TIMEOUT_MIN = 30.0  # a rolling update waits at least this long for a new instance to become ready
RECENT_EVENTS = 20  # events a runner keeps in memory for the status the node reports to the registry
RUNTIME_CLOSE_TIMEOUT = 10.0  # seconds a runtime gets to clean up when the gateway stops


class RecentEvent(msgspec.Struct, frozen=True):
    seq: int  # the event's id in the store: grows across restarts of the gateway
    ts: float
    event: str
    instance: str
    reason: str


async def stored_events(history: WorkloadHistory, namespace: str, name: str) -> list[RecentEvent]:
    """The newest RECENT_EVENTS events the store keeps of a workload, oldest first."""
    return [RecentEvent(e["id"], e["ts"], e["event"], e["instance"], e["reason"])
            for e in await history.events(namespace, name, limit=RECENT_EVENTS)]


def spec_text(workload: Workload) -> str:
    return msgspec.json.encode(workload, enc_hook=enc_hook).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ready_timeout(workload: Workload) -> float:
    check = workload.health
    if check is None:
        return READY_TIMEOUT_MIN
    return max(READY_TIMEOUT_MIN, float(check.initial_delay) + float(check.interval) * (check.failure_threshold + 1))


class WorkloadRunner:
    """One workload: a controller task that brings its instances to the target spec."""

    def __init__(self, manager: WorkloadManager, spec: Workload, version: int) -> None:
        self.manager = manager
        self.target = spec
        self.version = version
        self.id = f"{spec.namespace}/{spec.name}"
        self.instances: dict[str, InstanceRunner] = {}
        self.generation = 0
        self.epoch = 0  # a restart replaces every instance of an older epoch
        self.stopped_by_user = False
        self.not_scheduled = ""
        self.problem = ""
        self.refs = ""  # the values of the config items and secrets it uses, to restart it when they change
        self.rolling = False
        self.last_event = ""  # the newest event, for the status the node reports to the registry
        self.recent: collections.deque[RecentEvent] = collections.deque(maxlen=RECENT_EVENTS)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._controller(), name=f"workload {self.id}")
        self._wake.set()

    def changed(self) -> None:
        self._wake.set()

    async def event(self, event: str, instance: str = "", reason: str = "") -> None:
        log.info("workload %s%s: %s%s", self.id, f" ({instance})" if instance else "", event,
                 f": {reason}" if reason else "")
        self.last_event = event + (f" {instance}" if instance else "") + (f": {reason}" if reason else "")
        ts = time.time()
        try:
            seq = await self.manager.history.add_event(self.target.namespace, self.target.name, event, instance,
                                                       reason, ts=ts)
        except Exception as exc:  # the store closing under a late event must not break the instance's loop
            log.warning("workload %s: event %s not stored: %s", self.id, event, exc)
            return
        self.recent.append(RecentEvent(seq, ts, event, instance, reason))

    def update(self, spec: Workload, version: int) -> None:
        self.target, self.version, self.problem = spec, version, ""
        self._wake.set()

    @property
    def stop_marker(self) -> Path:
        """Present while the workload is stopped by request: the stop holds across restarts of the gateway."""
        return self.manager.root / self.target.namespace / self.target.name / "stopped"

    def restart(self) -> None:
        self.epoch += 1
        self.stopped_by_user = False
        self.stop_marker.unlink(missing_ok=True)
        self.problem = ""
        self._wake.set()

    def stop(self) -> None:
        self.stopped_by_user = True
        self.stop_marker.parent.mkdir(parents=True, exist_ok=True)
        self.stop_marker.touch()
        self._wake.set()

    async def close(self, reason: str) -> None:
        """Stop the controller and every instance (delete, or the gateway stopping)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(inst.stop(reason) for inst in self.instances.values()), return_exceptions=True)
        self.instances.clear()

    def cleanup_instance_dir(self, instance: InstanceRunner) -> None:
        """Files (secrets among them) live only while the instance runs."""
        shutil.rmtree(self.manager.instance_dir(self.target, instance.id), ignore_errors=True)

    # --- converging -------------------------------------------------------------------------------------------

    async def _controller(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._converge()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("workload %s: converging failed", self.id)
                self.problem = f"{type(exc).__name__}: {exc}"

    def _current(self, instance: InstanceRunner) -> bool:
        return instance.spec == self.target and instance.epoch == self.epoch

    async def _remove(self, instance: InstanceRunner, reason: str) -> None:
        await instance.stop(reason)
        self.instances.pop(instance.id, None)

    def _add(self, spec: Workload, replica: int) -> InstanceRunner:
        self.generation += 1
        ports = {p.name: p.host_port or free_port() for p in spec.all_ports}
        instance = InstanceRunner(self, spec, self.version, replica, self.generation, self.epoch, ports)
        self.instances[instance.id] = instance
        instance.start()
        return instance

    async def _converge(self) -> None:
        spec = self.target
        if self.stopped_by_user or self.not_scheduled or spec.replicas == 0:
            reason = ("stopped" if self.stopped_by_user else self.not_scheduled or "replicas: 0")
            for instance in list(self.instances.values()):
                await self._remove(instance, reason)
            return
        current = sorted((i for i in self.instances.values() if self._current(i)), key=lambda i: i.replica)
        old = sorted((i for i in self.instances.values() if not self._current(i)), key=lambda i: i.replica)
        for instance in current[spec.replicas:]:
            await self._remove(instance, "scaled down")
        current = current[:spec.replicas]
        free = [r for r in range(spec.replicas) if r not in {i.replica for i in current}]
        if old and free and not await self._prepare(spec, len(old)):
            return
        strategy = spec.strategy
        if strategy is None:  # one replica: a single instance's ports and files are not shared twice
            strategy = Strategy(type="Recreate") if spec.replicas <= 1 else Strategy(max_surge=1, max_unavailable=0)
        if strategy.type == "Recreate" or not old:
            for instance in old:
                await self._remove(instance, f"replaced by version {self.version}")
            for replica in free:
                self._add(spec, replica)
            return
        self.rolling = True
        try:
            await self._roll(spec, strategy, current, old, free)
        finally:
            self.rolling = False

    async def _roll(self, spec: Workload, strategy: Strategy, current: list[InstanceRunner],
                    old: list[InstanceRunner], free: list[int]) -> None:
        """RollingUpdate: never more than replicas + surge instances, never fewer than replicas - unavailable of
        them ready (old ones count as ready); a step starts new instances and waits until they are ready."""
        surge, unavailable = strategy.bounds(spec.replicas)
        reason = f"replaced by version {self.version}"
        for _ in range(spec.replicas + len(old) + 1):  # every step starts or stops at least one instance
            if not free:
                break
            if self.target is not spec or self.stopped_by_user:
                self._wake.set()  # a newer target: converge again from there
                return
            running = len(current) + len(old)
            for instance in old[:max(0, min(len(old), running - (spec.replicas - unavailable)))]:
                old.remove(instance)
                await self._remove(instance, reason)
            starting = [self._add(spec, replica)
                        for replica in free[:max(0, spec.replicas + surge - len(current) - len(old))]]
            if not starting and len(old) == 0:
                starting = [self._add(spec, replica) for replica in free]
            for new in starting:
                free.remove(new.replica)
            for new in starting:
                if not await new.wait_ready(ready_timeout(spec)):
                    self.problem = (f"rolling update to version {self.version} halted: {new.id} did not become "
                                    f"ready ({new.reason or new.state}); {len(old)} old instances kept")
                    await self.event("failed", new.id, self.problem)
                    return
                current.append(new)
            for instance in old[:max(0, len(current) + len(old) - spec.replicas)]:
                old.remove(instance)
                await self._remove(instance, reason)
        for instance in old:
            await self._remove(instance, reason)

    async def _prepare(self, spec: Workload, old: int) -> bool:
        """Let the runtime get the new version ready (pull its image) before an old instance stops; False: halt."""
        runtime = self.manager.registry.runtimes.get(spec.runtime)
        if runtime is None or runtime.unavailable() is not None:
            return True  # the instances fail with the reason
        try:
            await runtime.prepare(spec)
        except WorkloadError as exc:
            self.problem = f"update to version {self.version} halted: {exc}; {old} old instances kept"
            await self.event("failed", "", self.problem)
            return False
        return True

    # --- status -----------------------------------------------------------------------------------------------

    def status(self) -> tuple[str, str]:
        spec = self.target
        if self.stopped_by_user:
            return "stopped", "stopped by request"
        if self.not_scheduled:
            return "not-scheduled", self.not_scheduled
        why = self.manager.registry.why_not(spec.runtime)
        if why is not None:
            return "failed", why
        if spec.replicas == 0:
            return "stopped", "replicas: 0"
        current = [i for i in self.instances.values() if self._current(i)]
        ready = sum(i.ready for i in current)
        broken = [i for i in current if i.state in ("failed", "oom", "unhealthy", "restarting")]
        if self.problem:
            return ("degraded" if any(i.ready for i in self.instances.values()) else "failed"), self.problem
        if ready >= spec.replicas and len(current) >= spec.replicas:
            return ("updating" if len(self.instances) > len(current) else "running"), ""
        if broken:
            first = broken[0]
            terminal = all(i.terminal for i in broken) and not ready
            state = "failed" if terminal else "restarting" if not ready else "degraded"
            return state, f"{first.id}: {first.reason}"
        if any(i.state == "exited" for i in current):
            return "completed", "exited with code 0"
        return ("updating" if self.rolling or len(self.instances) > len(current) else "starting"), ""

    def describe(self) -> dict[str, Any]:
        status, reason = self.status()
        current = [i for i in self.instances.values() if self._current(i)]
        spec = self.target
        return {"id": self.id, "namespace": spec.namespace, "name": spec.name, "runtime": spec.runtime,
                "version": self.version, "status": status, "reason": reason, "replicas": spec.replicas,
                "ready": sum(i.ready for i in current), "labels": spec.labels, "annotations": spec.annotations,
                "accelerators": spec.accelerators, "last_event": self.last_event,
                "owner": self.manager.gateway.resources.resource_owner("Workload", spec.namespace, spec.name),
                "instances": [i.describe() for i in sorted(self.instances.values(), key=lambda i: i.id)]}


class WorkloadManager:
    """Every workload of the node, kept in step with the Workload documents of the configuration."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.registry = RuntimeRegistry()
        self.runners: dict[str, WorkloadRunner] = {}
        self.history = WorkloadHistory(gateway.store)
        self.logs: dict[str, WorkloadLog] = {}
        self.figures = WorkloadFigures()
        self._notes: dict[str, tuple[str, str]] = {}  # workload id -> (actor, note) for its next version
        self._started = False
        # the workload_fence hook's answer: None not fenced, "" allowed now, else why not (offline failover)
        self.fence: Callable[[Workload], str | None] | None = None
        self.closing: set[str] = set()  # ids of deleted workloads whose instances are still stopping
        self._reconciling = asyncio.Lock()  # a refence and a configuration change bring them in step one at a time

    @property
    def root(self) -> Path:
        return self.gateway.data_dir / "workloads"

    def instance_dir(self, workload: Workload, instance: str) -> Path:
        return self.root / workload.namespace / workload.name / "instances" / instance

    def log(self, namespace: str, name: str) -> WorkloadLog:
        key = f"{namespace}/{name}"
        if key not in self.logs:
            self.logs[key] = WorkloadLog(self.root / namespace / name / "logs")
        return self.logs[key]

    def _load_runtimes(self) -> None:
        for classes in self.gateway.pm.hook.register_runtimes():
            for cls in classes:
                name = getattr(cls, "name", None)
                try:
                    if not isinstance(name, str) or not (isinstance(cls, type) and issubclass(cls, Runtime)):
                        raise PluginError(f"{cls!r} is not a gateway.workloads.model.Runtime with a name")
                    if name in self.registry.runtimes:
                        raise PluginError(f"two plugins serve runtime {name!r}")
                    self.registry.runtimes[name] = cls(self.gateway.data_dir)
                except Exception as exc:  # one broken runtime plugin fails its own workloads, not the gateway
                    log.error("runtime %s not loaded: %s", name or cls, exc)
                    self.registry.problems[str(name)] = str(exc)
        for name, runtime in self.registry.runtimes.items():
            reason = runtime.unavailable()
            if reason:
                log.warning("runtime %s cannot run workloads here: %s", name, reason)

    async def start(self, config: Config) -> None:
        self.fence = self.gateway.pm.hook.workload_fence(gateway=self.gateway)
        self._load_runtimes()  # the runtimes stop what a gateway that died left running
        for leftover in self.root.glob("*/*/instances/*"):  # files (secrets among them) of instances gone
            shutil.rmtree(leftover, ignore_errors=True)
        await self.history.load_delivered()
        self._started = True
        self.gateway.start_task("workload-figures", lambda: self.figures.run(self.running_instances))
        await self.reconcile(config)

    async def stop(self) -> None:
        self._started = False
        await asyncio.gather(*(runner.close("the gateway stops") for runner in self.runners.values()),
                             return_exceptions=True)
        self.runners.clear()
        for name, runtime in self.registry.runtimes.items():
            try:
                async with asyncio.timeout(RUNTIME_CLOSE_TIMEOUT):
                    await runtime.close()
            except Exception as exc:  # one runtime failing to clean up must not keep the others from it
                log.warning("runtime %s did not close cleanly: %s", name, str(exc) or type(exc).__name__)
        for workload_log in self.logs.values():
            workload_log.close()

    def placement(self, workload: Workload) -> str:
        """Why this workload does not run on this node, or "" when it does."""
        node = self.gateway.node_name
        if workload.node is not None and workload.node != node:
            return f"placed on node {workload.node}, this is {node}"
        if self.fence is not None and (held := self.fence(workload)):
            return held
        labels = self.gateway.config.gateway.labels
        missing = {k: v for k, v in workload.node_selector.items() if labels.get(k) != v}
        if missing:
            wanted = ", ".join(f"{k}={v}" for k, v in sorted(missing.items()))
            return f"node_selector {wanted} does not match this node's labels"
        if workload.accelerators and workload.replicas:
            offered = self.accelerators()
            short = [f"{count * workload.replicas} x {name} (this node offers {offered.get(name, 0)})"
                     for name, count in sorted(workload.accelerators.items())
                     if count * workload.replicas > offered.get(name, 0)]
            if short:
                return "needs " + ", ".join(short)
        return ""

    def accelerators(self) -> dict[str, int]:
        """What this node offers: the Gateway document's workloads.accelerators and its CDI specs."""
        return node_accelerators(self.gateway.config.gateway.workloads)

    def _refs(self, workload: Workload) -> str:
        config = self.gateway.config
        values = []
        for ref in (*workload.env_from, *workload.files):
            source = (config.config_items.get((workload.namespace, ref.config_item)) if ref.config_item
                      else config.secrets.get((workload.namespace, ref.secret or "")))
            values.append(source.data.get(ref.key) if source is not None else None)
        return msgspec.json.encode(values).decode()

    async def _version_of(self, workload: Workload) -> tuple[int, bool]:
        """The version number of a spec, recording it when it differs from the latest one; (version, new)."""
        text = spec_text(workload)
        latest = await self.history.latest(workload.namespace, workload.name)
        if latest is not None and latest[1] == text:
            return latest[0], False
        actor, note = self._notes.pop(f"{workload.namespace}/{workload.name}", ("", ""))
        return await self.history.add_version(workload.namespace, workload.name, text, actor=actor, note=note), True

    async def refence(self) -> None:
        """The fence's answers changed: start or stop the workloads it lets run now or not."""
        await self.reconcile(self.gateway.config)

    async def reconcile(self, config: Config) -> None:
        """Bring the workloads in step with the configuration's Workload documents."""
        async with self._reconciling:
            await self._reconcile(config)

    async def _reconcile(self, config: Config) -> None:
        if not self._started:
            return
        wanted = {f"{ns}/{name}": doc for (ns, name), doc in config.workloads.items()}
        for workload_id in self.runners.keys() - wanted.keys():
            runner = self.runners.pop(workload_id)
            self.closing.add(workload_id)
            try:
                await runner.close("deleted")
            finally:
                self.closing.discard(workload_id)
            runner.stop_marker.unlink(missing_ok=True)
            await runner.event("stopped", "", "deleted")
        for workload_id, doc in wanted.items():
            found = self.runners.get(workload_id)
            refs = self._refs(doc)
            placement = self.placement(doc)
            if found is None:
                version, _ = await self._version_of(doc)
                runner = self.runners[workload_id] = WorkloadRunner(self, doc, version)
                runner.refs, runner.not_scheduled = refs, placement
                runner.stopped_by_user = runner.stop_marker.exists()
                # the events of before a restart of the gateway that the registry has not got yet go with these
                runner.recent.extend(await stored_events(self.history, doc.namespace, doc.name))
                await runner.event("scheduled", "", f"version {version}" + (f"; not here: {placement}"
                                                                            if placement else ""))
                runner.start()
                continue
            runner = found
            if runner.target != doc:
                version, _ = await self._version_of(doc)
                runner.not_scheduled = placement
                runner.update(doc, version)
                await runner.event("scheduled", "", f"version {version}")
            elif runner.refs != refs and not runner.stopped_by_user:  # a stopped one reads them when started
                await runner.event("scheduled", "", "its config items or secrets changed: restarting")
                runner.restart()
            elif runner.not_scheduled != placement:
                runner.not_scheduled = placement
                runner.changed()
            runner.refs = refs

    def instance_spec(self, instance: InstanceRunner) -> InstanceSpec:
        """Resolve environment, files and ports of one instance (raises WorkloadError on a missing value)."""
        workload = instance.spec
        work_dir = self.instance_dir(workload, instance.id)
        env = {"PATH": os.environ.get("PATH", os.defpath), "LANG": os.environ.get("LANG", "C.UTF-8"),
               "HOME": str(work_dir), "FIELDGATE_NODE": self.gateway.node_name,
               "FIELDGATE_WORKLOAD": f"{workload.namespace}/{workload.name}", "FIELDGATE_INSTANCE": instance.id,
               "FIELDGATE_REPLICA": str(instance.replica), "FIELDGATE_VERSION": str(instance.version),
               "FIELDGATE_FILES": str(work_dir / "files"),
               # the node's files area (what the registry sends): apps read it, only the uplink writes it
               "FIELDGATE_FILES_DIR": str(files_area(self.gateway.data_dir))}
        for i, (name, port) in enumerate(instance.ports.items()):
            env[f"FIELDGATE_PORT_{name.upper().replace('-', '_')}"] = str(port)
            if i == 0:
                env["PORT"] = str(port)
        services = getattr(self.gateway, "services", None)
        if services is not None:  # <SERVICE>_SERVICE_HOST/_PORT of the namespace's services, as Kubernetes
            env.update(services.environment(workload.namespace))
        env.update(workload.env)
        for ref in workload.env_from:
            env[ref.name] = self._value(workload, ref.config_item, ref.secret, ref.key)[0]
        files = {}
        for file in workload.files:
            value, secret = self._value(workload, file.config_item, file.secret, file.key)
            files[file.path] = (value.encode(), secret)
        check_devices(workload)
        volumes = volume_dirs(self.gateway.data_dir, workload, work_dir, self.gateway.config.gateway.workloads)
        for volume in workload.volumes:
            env[env_name(volume.name)] = str(volumes[volume.name])
        workload_log = self.log(workload.namespace, workload.name)

        def log_line(stream: str, line: str, container: str = "") -> None:
            workload_log.write(instance.id, stream, line, container)

        async def event(event: str, reason: str) -> None:
            await instance.owner.event(event, instance.id, reason)

        return InstanceSpec(workload, instance.id, instance.version, env, files, dict(instance.ports), work_dir,
                            log_line, volumes, event=event, services=services,
                            bound_to_gateway=self.fence is not None and self.fence(workload) is not None)

    def _value(self, workload: Workload, config_item: str | None, secret: str | None, key: str) -> tuple[str, bool]:
        config = self.gateway.config
        source = (config.config_items.get((workload.namespace, config_item)) if config_item is not None
                  else config.secrets.get((workload.namespace, secret or "")))
        if source is None or key not in source.data:
            kind = "ConfigItem" if config_item is not None else "Secret"
            raise WorkloadError(f"{kind} {workload.namespace}/{config_item or secret} has no key {key!r}")
        return source.data[key], secret is not None

    # --- queries and commands ---------------------------------------------------------------------------------

    def running_instances(self) -> list[tuple[str, InstanceRunner]]:
        """(workload id, instance) of every instance that has a process or container now."""
        return [(runner.id, instance) for runner in list(self.runners.values())
                for instance in list(runner.instances.values()) if instance.handle is not None]

    def runner(self, namespace: str, name: str) -> WorkloadRunner:
        runner = self.runners.get(f"{namespace}/{name}")
        if runner is None:
            raise NotFound(f"no workload {namespace}/{name}")
        return runner

    def describe(self) -> list[dict[str, Any]]:
        return [runner.describe() for _, runner in sorted(self.runners.items())]

    async def stop_workload(self, namespace: str, name: str, *, actor: str, address: str = "") -> None:
        runner = self.runner(namespace, name)
        runner.stop()
        await runner.event("stopped", "", f"stop requested by {actor}")
        await self.gateway.store.audit.record(actor, "stop", f"Workload {namespace}/{name}", "", address)

    async def restart_workload(self, namespace: str, name: str, *, actor: str, address: str = "") -> None:
        runner = self.runner(namespace, name)
        runner.restart()
        await runner.event("restarted", "", f"restart requested by {actor}")
        await self.gateway.store.audit.record(actor, "restart", f"Workload {namespace}/{name}", "", address)

    async def start_workload(self, namespace: str, name: str, *, actor: str, address: str = "") -> bool:
        """Start a workload stopped by request (as a restart does); False, doing nothing, when it was not stopped."""
        runner = self.runner(namespace, name)
        if not runner.stopped_by_user:
            return False
        runner.restart()
        await runner.event("scheduled", "", f"start requested by {actor}")
        await self.gateway.store.audit.record(actor, "start", f"Workload {namespace}/{name}", "", address)
        return True

    async def user_action(self, action: str, namespace: str, name: str, *, actor: str, address: str = "") -> bool:
        """`stop`, `start` or `restart` a workload for a user (API and pages); False when a start found it running."""
        if action == "stop":
            await self.stop_workload(namespace, name, actor=actor, address=address)
        elif action == "start":
            return await self.start_workload(namespace, name, actor=actor, address=address)
        elif action == "restart":
            await self.restart_workload(namespace, name, actor=actor, address=address)
        else:
            raise NotFound(f"no workload action {action!r} (expected stop, start or restart)")
        return True

    async def rollback(self, namespace: str, name: str, version: int, *, actor: str, address: str = "") -> int:
        """Deploy a kept version's spec again (it becomes the newest version); returns that version number."""
        runner = self.runner(namespace, name)
        text = await self.history.version(namespace, name, version)
        if text is None:
            kept = [v["version"] for v in await self.history.versions(namespace, name)]
            raise NotFound(f"workload {namespace}/{name} has no version {version} (kept: "
                           f"{', '.join(map(str, kept)) or 'none'})")
        owner = self.gateway.resources.resource_owner("Workload", namespace, name)
        if owner not in ("local",):
            where = "the registry" if owner == "registry" else f"the file {owner}"
            if owner == "file":
                entry = self.gateway.config.raw.get(("Workload", namespace, name))
                where = f"the file {entry[0].file}" if entry else "a configuration file"
            raise ConfigError(f"Workload {namespace}/{name} is owned by {where}; roll it back there")
        workload = msgspec.json.decode(text, type=Workload, dec_hook=dec_hook)
        if workload == runner.target:
            return runner.version
        self._notes[runner.id] = (actor, f"rollback to version {version}")
        await self.gateway.resources.apply_documents([workload], actor=actor, address=address)
        await self.gateway.store.audit.record(actor, "rollback", f"Workload {namespace}/{name}", f"version {version}",
                                       address)
        return self.runner(namespace, name).version

    def status(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for runner in self.runners.values():
            status, _ = runner.status()
            counts[status] = counts.get(status, 0) + 1
        return {"total": len(self.runners), **counts, "accelerators": self.accelerators(),
                "runtimes": {name: runtime.describe() for name, runtime in self.registry.runtimes.items()}}
