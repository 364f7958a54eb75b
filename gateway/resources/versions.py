"""The release of fieldgate that first reads each field of a Workload document.

A node refuses a document with a field it does not know (the schema forbids unknown fields), so the registry sends
a node only the Workloads whose fields its version reads and holds the others back, saying which field and which
version it needs (gateway.registry.workloads). Every Workload field is listed here; a test fails when one is not.
"""

from __future__ import annotations

import re
from typing import Any

FIRST_RELEASE = "0.1.0"
WORKLOAD_FIELDS_SINCE: dict[str, str] = {
    **dict.fromkeys((
        "kind", "name", "namespace", "labels", "description", "runtime", "command", "image", "image_pull_policy",
        "args", "env", "env_from", "files", "working_dir", "network", "ports", "limits", "restart", "restart_delay",
        "restart_delay_max", "health", "replicas", "stop_grace", "node", "node_selector"), FIRST_RELEASE),
    **dict.fromkeys(("annotations", "devices", "accelerators", "security", "volumes", "lifecycle", "strategy",
                     "requests", "containers", "init_containers"), "0.2.0"),
}
# The first release that reads each kind the registry sends nodes; a kind not listed is read by every release.
KINDS_SINCE: dict[str, str] = {"Service": "0.2.0"}
_VERSION = re.compile(r"^(\d{1,6})\.(\d{1,6})(?:\.(\d{1,6}))?")


def parse_version(text: Any) -> tuple[int, int, int] | None:
    """(major, minor, patch) of `0.2.0`, `0.2.0rc1` or `0.2`; None for anything else (an unknown version)."""
    match = _VERSION.match(text) if isinstance(text, str) else None
    if match is None:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def unsupported_fields(raw: dict[str, Any], node_version: Any) -> list[tuple[str, str]]:
    """(field, first version that reads it) of the fields of a raw Workload a node of `node_version` does not read;
    none when the node's version is unknown (it is sent and the node reports what it cannot read)."""
    have = parse_version(node_version)
    if have is None:
        return []
    found = []
    for field in raw:
        since = WORKLOAD_FIELDS_SINCE.get(field)
        needed = parse_version(since) if since is not None else None
        if needed is not None and have < needed:
            found.append((field, str(since)))
    return sorted(found)


def reads_kind(kind: str, node_version: Any) -> bool:
    """Whether a node of `node_version` reads documents of `kind` (yes when its version is unknown)."""
    have, since = parse_version(node_version), KINDS_SINCE.get(kind)
    needed = parse_version(since) if since is not None else None
    return have is None or needed is None or have >= needed
