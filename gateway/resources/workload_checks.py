"""Checks of Workload documents against the other documents (config items, secrets), for the loader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

from gateway.resources.schema import (
    ConfigItem,
    Container,
    HealthCheck,
    LifecycleHook,
    Secret,
    Service,
    ValueRef,
    Workload,
    WorkloadSettings,
)

CONTAINER_ONLY = ("privileged", "capabilities", "read_only_root_filesystem")


def host_path_problem(path: str, settings: WorkloadSettings) -> str | None:
    """Why a volume may not mount the host path `path` on this node, or None."""
    parts = PurePosixPath(path).parts
    if ".." in parts:
        return f"{path!r} must not contain '..'"
    for prefix in settings.host_path_prefixes:
        allowed = PurePosixPath(prefix).parts
        if parts[:len(allowed)] == allowed:
            return None
    allowed_text = ", ".join(settings.host_path_prefixes) or "none"
    return (f"{path} is not under a prefix this node allows (the Gateway's workloads.host_path_prefixes: "
            f"{allowed_text})")


def volume_problems(workload: Workload, settings: WorkloadSettings | None) -> list[tuple[str, str]]:
    """(path, message) of the volumes; host paths are checked against `settings` when given."""
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    mounts: set[str] = set()
    container = workload.runtime != "process"
    for i, volume in enumerate(workload.volumes):
        where = f"$.volumes[{i}]"
        if volume.name in names:
            problems.append((f"{where}.name", f"volume {volume.name!r} is given twice"))
        names.add(volume.name)
        sources = [key for key, given in (("host_path", volume.host_path is not None),
                                          ("persistent", volume.persistent), ("scratch", volume.scratch)) if given]
        if len(sources) != 1:
            problems.append((where, "give exactly one of host_path, persistent: true or scratch: true"
                                    + (f" (got {', '.join(sources)})" if sources else "")))
        if volume.mount_path is not None:
            mount = PurePosixPath(volume.mount_path)
            if ".." in mount.parts or str(mount) == "/":
                problems.append((f"{where}.mount_path", f"{volume.mount_path!r}: an absolute path below /, without "
                                                        "'..'"))
            elif str(mount) in mounts:
                problems.append((f"{where}.mount_path", f"{volume.mount_path} is mounted twice"))
            mounts.add(str(mount))
        elif container and not (workload.containers or workload.init_containers):
            problems.append((f"{where}.mount_path", f"the {workload.runtime} runtime mounts a volume at a mount_path"))
        if volume.host_path is not None and settings is not None:
            problem = host_path_problem(volume.host_path, settings)
            if problem is not None:
                problems.append((f"{where}.host_path", problem))
    return problems


def _hook_problems(path: str, hook: LifecycleHook | None, workload: Workload,
                   port_names: set[str]) -> list[tuple[str, str]]:
    if hook is None:
        return []
    if hook.timeout <= 0:
        return [(f"{path}.timeout", "must be above 0")]
    if hook.type == "exec":
        return [] if hook.command else [(f"{path}.command", "an exec hook needs a command")]
    if workload.network == "none":
        return [(f"{path}.type", "network none: an http hook cannot reach the app (use an exec hook)")]
    if hook.port is None:
        return [(f"{path}.port", "an http hook needs a port (a number or a port name)")]
    if isinstance(hook.port, str) and hook.port not in port_names:
        return [(f"{path}.port", f"no port named {hook.port!r} (ports: {', '.join(sorted(port_names)) or 'none'})")]
    if isinstance(hook.port, int) and not 1 <= hook.port <= 65535:
        return [(f"{path}.port", f"{hook.port} is not a port number")]
    return []


def security_problems(workload: Workload) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    security = workload.secured
    if workload.runtime == "process":
        for field in CONTAINER_ONLY:
            if getattr(security, field) != getattr(type(security)(), field):
                problems.append((f"$.security.{field}", "applies to containers only (a process takes run_as_user "
                                                         "and run_as_group)"))
    for i, device in enumerate(workload.devices):
        if ".." in PurePosixPath(device.path).parts:
            problems.append((f"$.devices[{i}].path", f"{device.path!r} must not contain '..'"))
        if device.container_path is not None and workload.runtime == "process":
            problems.append((f"$.devices[{i}].container_path", "applies to containers only"))
    paths = [device.path for device in workload.devices]
    for i, path in enumerate(paths):
        if path in paths[:i]:
            problems.append((f"$.devices[{i}].path", f"{path} is given twice"))
    return problems


def _health_problems(path: str, health: HealthCheck | None, network: str, port_names: set[str]
                     ) -> list[tuple[str, str]]:
    if health is None:
        return []
    problems: list[tuple[str, str]] = []
    if health.type in ("http", "tcp"):
        if network == "none":
            problems.append((f"{path}.type", f"network none: a {health.type} check cannot reach the app (use an "
                                             "exec check)"))
        elif health.port is None:
            problems.append((f"{path}.port", f"a {health.type} check needs a port (a number or a port name)"))
        elif isinstance(health.port, str) and health.port not in port_names:
            known = ", ".join(sorted(port_names)) or "none"
            problems.append((f"{path}.port", f"no port named {health.port!r} (ports: {known})"))
        elif isinstance(health.port, int) and not 1 <= health.port <= 65535:
            problems.append((f"{path}.port", f"{health.port} is not a port number"))
    elif not health.command:
        problems.append((f"{path}.command", "an exec check needs a command"))
    if health.interval <= 0:
        problems.append((f"{path}.interval", "must be above 0"))
    return problems


def _container_problems(path: str, container: Container, workload: Workload, port_names: set[str], *,
                        init: bool) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if init and container.ports:
        problems.append((f"{path}.ports", "an init container publishes no ports (it runs before the app)"))
    if init and container.health is not None:
        problems.append((f"{path}.health", "an init container has no health check (it must exit 0)"))
    problems += _health_problems(f"{path}.health", container.health, workload.network, port_names)
    if container.limits.memory is not None and container.limits.memory < 1 << 20:
        problems.append((f"{path}.limits.memory", "must be at least 1Mi"))
    volumes = {volume.name for volume in workload.volumes}
    mounts: set[str] = set()
    for i, mount in enumerate(container.volume_mounts):
        where = f"{path}.volume_mounts[{i}]"
        if mount.name not in volumes:
            problems.append((f"{where}.name", f"no volume {mount.name!r} in $.volumes (volumes: "
                                              f"{', '.join(sorted(volumes)) or 'none'})"))
        mount_path = PurePosixPath(mount.mount_path)
        if ".." in mount_path.parts or str(mount_path) == "/":
            problems.append((f"{where}.mount_path", f"{mount.mount_path!r}: an absolute path below /, without '..'"))
        elif str(mount_path) in mounts:
            problems.append((f"{where}.mount_path", f"{mount.mount_path} is mounted twice in this container"))
        mounts.add(str(mount_path))
    return problems


def pod_problems(workload: Workload, port_names: set[str]) -> list[tuple[str, str]]:
    """(path, message) of `containers` and `init_containers`; `port_names` gets the containers' port names."""
    problems: list[tuple[str, str]] = []
    if not workload.containers and not workload.init_containers:
        return problems
    if workload.runtime == "process":
        field = "containers" if workload.containers else "init_containers"
        return [(f"$.{field}", "the process runtime runs one command; containers need the container runtime")]
    if not workload.containers:
        return [("$.containers", "init_containers run before the app containers: give those in `containers`")]
    for field, given in (("image", workload.image is not None), ("command", bool(workload.command)),
                         ("args", bool(workload.args)), ("health", workload.health is not None)):
        if given:
            problems.append((f"$.{field}", f"a workload with `containers` gives its {field} per container"))
    names: set[str] = set()
    for field, group in (("init_containers", workload.init_containers), ("containers", workload.containers)):
        for i, container in enumerate(group):
            if container.name in names:
                problems.append((f"$.{field}[{i}].name", f"container {container.name!r} is given twice"))
            names.add(container.name)
            for j, port in enumerate(container.ports):
                if port.name in port_names:
                    problems.append((f"$.{field}[{i}].ports[{j}].name", f"duplicate port {port.name!r}"))
                port_names.add(port.name)
                if workload.network == "none":
                    problems.append((f"$.{field}[{i}].ports[{j}]", "network none has no ports"))
    for field, group in (("init_containers", workload.init_containers), ("containers", workload.containers)):
        for i, container in enumerate(group):
            problems += _container_problems(f"$.{field}[{i}]", container, workload, port_names,
                                            init=field == "init_containers")
    return problems


def request_problems(workload: Workload) -> list[tuple[str, str]]:
    """(path, message) of requests above the limits: an instance could never get what it reserved."""
    problems: list[tuple[str, str]] = []
    requests, limits = workload.requests, workload.limits
    if requests is None:
        return problems
    if requests.cpu is not None and limits.cpu is not None and requests.cpu > limits.cpu:
        problems.append(("$.requests.cpu", f"{requests.cpu:g} cores is more than limits.cpu ({limits.cpu:g})"))
    if requests.memory is not None and limits.memory is not None and requests.memory > limits.memory:
        problems.append(("$.requests.memory", f"{requests.memory} bytes is more than limits.memory "
                                              f"({limits.memory} bytes)"))
    return problems


def host_port_problems(workload: Workload) -> list[tuple[str, str]]:
    """(path, message) of fixed host ports two instances would claim at once: with more than one replica, or with a
    rolling update that starts a new instance beside the old one (max_surge above 0). Refused rather than changed
    quietly: the document says what runs."""
    fixed = [(i, port) for i, port in enumerate(workload.ports) if port.host_port]
    if not fixed or workload.network == "none":
        return []
    i, port = fixed[0]
    where = f"$.ports[{i}].host_port"
    if workload.replicas > 1:
        return [(where, f"{port.host_port} is a fixed port and replicas is {workload.replicas}: every instance would "
                        "claim it (use host_port 0 for a free port per instance, or replicas 1)")]
    strategy = workload.strategy
    if strategy is not None and strategy.type == "RollingUpdate":
        surge, _ = strategy.bounds(max(workload.replicas, 1))
        if surge > 0:
            return [(where, f"{port.host_port} is a fixed port and strategy.max_surge lets an update start a second "
                            f"instance ({surge}) beside the old one: both would claim it (set strategy.max_surge: 0 "
                            "with max_unavailable: 1, strategy.type: Recreate, or host_port 0)")]
    return []


def workload_problems(workload: Workload, config_items: Mapping[tuple[str, str], ConfigItem],
                      secrets: Mapping[tuple[str, str], Secret],
                      settings: WorkloadSettings | None = None) -> list[tuple[str, str]]:
    """(path, message) for every finding in one Workload document; host paths checked when `settings` is given."""
    problems: list[tuple[str, str]] = []
    if workload.runtime == "process":
        if not workload.command:
            problems.append(("$.command", "the process runtime needs a command"))
        if workload.image is not None:
            problems.append(("$.image", "the process runtime runs a command, not an image"))
    elif not workload.command and workload.image is None and not (workload.containers or
                                                                   workload.init_containers):
        problems.append(("$.image", f"the {workload.runtime} runtime needs an image or a command"))
    for i, ref in enumerate(workload.env_from):
        problems += _ref_problems(f"$.env_from[{i}]", ref, workload.namespace, config_items, secrets)
    names = [ref.name for ref in workload.env_from]
    for i, name in enumerate(names):
        if name in names[:i] or name in workload.env:
            problems.append((f"$.env_from[{i}].name", f"{name} is set twice"))
    paths: set[str] = set()
    for i, file in enumerate(workload.files):
        problems += _ref_problems(f"$.files[{i}]", file, workload.namespace, config_items, secrets)
        path = PurePosixPath(file.path)
        if path.is_absolute() or ".." in path.parts:
            problems.append((f"$.files[{i}].path", f"{file.path!r} must be relative, without '..'"))
        elif str(path) in paths:
            problems.append((f"$.files[{i}].path", f"{file.path!r} is given twice"))
        paths.add(str(path))
    port_names: set[str] = set()
    for i, port in enumerate(workload.ports):
        if port.name in port_names:
            problems.append((f"$.ports[{i}].name", f"duplicate port {port.name!r}"))
        port_names.add(port.name)
        if workload.network == "none":
            problems.append((f"$.ports[{i}]", "network none has no ports"))
    problems += pod_problems(workload, port_names)
    problems += _health_problems("$.health", workload.health, workload.network, port_names)
    if workload.restart_delay_max < workload.restart_delay:
        problems.append(("$.restart_delay_max", "must not be shorter than restart_delay"))
    if workload.limits.memory is not None and workload.limits.memory < 1 << 20:
        problems.append(("$.limits.memory", "must be at least 1Mi"))
    problems += request_problems(workload)
    problems += host_port_problems(workload)
    problems += security_problems(workload)
    problems += volume_problems(workload, settings)
    problems += _hook_problems("$.lifecycle.post_start", workload.hooks.post_start, workload, port_names)
    problems += _hook_problems("$.lifecycle.pre_stop", workload.hooks.pre_stop, workload, port_names)
    return problems


def _ref_problems(path: str, ref: ValueRef, namespace: str, config_items: Mapping[tuple[str, str], ConfigItem],
                  secrets: Mapping[tuple[str, str], Secret]) -> list[tuple[str, str]]:
    if (ref.config_item is None) == (ref.secret is None):
        return [(path, "give either config_item or secret")]
    found: ConfigItem | Secret | None
    if ref.config_item is not None:
        kind, name, found = "ConfigItem", ref.config_item, config_items.get((namespace, ref.config_item))
        field = "config_item"
    else:
        assert ref.secret is not None
        kind, name, found = "Secret", ref.secret, secrets.get((namespace, ref.secret))
        field = "secret"
    if found is None:
        return [(f"{path}.{field}", f"no {kind} {namespace}/{name}")]
    if ref.key not in found.data:
        keys = ", ".join(sorted(found.data)) or "none"
        return [(f"{path}.key", f"{kind} {namespace}/{name} has no key {ref.key!r} (keys: {keys})")]
    return []


def service_problems(service: Service, workloads: Mapping[tuple[str, str], Workload]) -> list[tuple[str, str]]:
    """(path, message) of a Service against the workloads it names: a target port given by name must be a port of
    every workload behind it that is known here (the registry's workloads may be elsewhere)."""
    behind = [w for (namespace, name), w in sorted(workloads.items()) if namespace == service.namespace and (
        name == service.workload if service.workload is not None
        else all(w.labels.get(key) == value for key, value in service.selector.items()))]
    problems: list[tuple[str, str]] = []
    for i, port in enumerate(service.ports):
        if not isinstance(port.target_port, str):
            continue
        for workload in behind:
            names = [p.name for p in workload.ports]
            if port.target_port not in names:
                problems.append((f"$.ports[{i}].target_port", f"workload {workload.name} has no port named "
                                 f"{port.target_port!r} (its ports: {', '.join(names) or 'none'})"))
    return problems
