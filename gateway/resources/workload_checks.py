"""Checks of Workload documents against the other documents (config items, secrets), for the loader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

from gateway.resources.schema import (
    ConfigItem,
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
        elif container:
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
    elif not workload.command and workload.image is None:
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
    health = workload.health
    if health is not None:
        if health.type in ("http", "tcp"):
            if workload.network == "none":
                problems.append(("$.health.type", f"network none: a {health.type} check cannot reach the app "
                                                  "(use an exec check)"))
            elif health.port is None:
                problems.append(("$.health.port", f"a {health.type} check needs a port (a number or a port name)"))
            elif isinstance(health.port, str) and health.port not in port_names:
                known = ", ".join(sorted(port_names)) or "none"
                problems.append(("$.health.port", f"no port named {health.port!r} (ports: {known})"))
            elif isinstance(health.port, int) and not 1 <= health.port <= 65535:
                problems.append(("$.health.port", f"{health.port} is not a port number"))
        elif not health.command:
            problems.append(("$.health.command", "an exec check needs a command"))
        if health.interval <= 0:
            problems.append(("$.health.interval", "must be above 0"))
    if workload.restart_delay_max < workload.restart_delay:
        problems.append(("$.restart_delay_max", "must not be shorter than restart_delay"))
    if workload.limits.memory is not None and workload.limits.memory < 1 << 20:
        problems.append(("$.limits.memory", "must be at least 1Mi"))
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
