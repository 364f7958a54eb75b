"""The accelerators a node offers: declared in its Gateway document and described by CDI spec files
(https://github.com/cncf-tags/container-device-interface: a spec's `kind` is `vendor/class`, its `devices` the
units), reported to the registry, which places workloads by them."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import msgspec

from gateway.resources.schema import WorkloadSettings

log = logging.getLogger(__name__)
CDI_KIND = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
CDI_FILE_MAX = 1 << 20  # bytes of one spec file read at most
CDI_FILES_MAX = 256  # spec files read per directory at most
COUNT_MAX = 1024


class CdiDevice(msgspec.Struct):
    name: str


class CdiSpec(msgspec.Struct):
    kind: str
    devices: list[CdiDevice] = []


def cdi_accelerators(directories: list[str]) -> dict[str, int]:
    """Units per kind from the CDI spec files (`*.json`, `*.yaml`, `*.yml`) in `directories`; bad files are logged."""
    found: dict[str, int] = {}
    for directory in directories:
        base = Path(directory)
        if not base.is_dir():
            continue
        files = sorted(p for p in base.iterdir() if p.suffix in (".json", ".yaml", ".yml"))[:CDI_FILES_MAX]
        for path in files:
            try:
                raw = path.read_bytes()[:CDI_FILE_MAX + 1]
                if len(raw) > CDI_FILE_MAX:
                    raise ValueError(f"larger than {CDI_FILE_MAX} bytes")
                spec = (msgspec.json.decode(raw, type=CdiSpec) if path.suffix == ".json"
                        else msgspec.yaml.decode(raw, type=CdiSpec))
                if not CDI_KIND.fullmatch(spec.kind) or len(spec.kind) > 253:
                    raise ValueError(f"kind {spec.kind[:80]!r} is not vendor/class")
            except (OSError, ValueError, msgspec.DecodeError) as exc:
                log.warning("CDI spec %s ignored: %s", path, exc)
                continue
            found[spec.kind] = min(found.get(spec.kind, 0) + len({d.name for d in spec.devices}), COUNT_MAX)
    return found


def node_accelerators(settings: WorkloadSettings) -> dict[str, int]:
    """What the node offers: its CDI specs, and over them what the Gateway document declares."""
    return {**cdi_accelerators(settings.cdi_dirs), **settings.accelerators}


def as_counts(raw: Any) -> dict[str, int]:
    """A node's reported accelerators, read defensively (the registry reads what a node sent)."""
    if not isinstance(raw, dict):
        return {}
    return {str(k)[:253]: min(v, COUNT_MAX) for k, v in list(raw.items())[:64]
            if isinstance(v, int) and not isinstance(v, bool) and v > 0}
