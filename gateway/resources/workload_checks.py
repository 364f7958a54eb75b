"""Checks of Workload documents against the other documents (config items, secrets), for the loader."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath

from gateway.resources.schema import ConfigItem, Secret, ValueRef, Workload


def workload_problems(workload: Workload, config_items: Mapping[tuple[str, str], ConfigItem],
                      secrets: Mapping[tuple[str, str], Secret]) -> list[tuple[str, str]]:
    """(path, message) for every finding in one Workload document."""
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
