"""Firmware profiles: register maps of real devices, `firmware-profiles/<vendor>/<model>.yaml`.

A device document may say `profile: eastron/sdm630` instead of naming a model and listing visitors; it
supplies both. Profiles are looked up in the directories of `$FIELDGATE_PROFILE_PATH` (os.pathsep-separated),
then in the `firmware-profiles` directory beside the `gateway` package.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml
from msgspec import Meta

import gateway
from gateway.errors import ConfigError
from gateway.resources.schema import Base, DeviceModel, PropertyModel, non_finite_numbers

PROFILE_PATH_VARIABLE = "FIELDGATE_PROFILE_PATH"
_REF = re.compile(r"^[a-z0-9]+([-_.][a-z0-9]+)*/[a-z0-9]+([-_.][a-z0-9]+)*$")
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ProfileProperty(PropertyModel, kw_only=True):
    """One property of a profile: its model entry and where the device keeps it."""

    visitor: dict[str, Any]


class ProfileDocument(Base, kw_only=True):
    """The file format of a firmware profile."""

    vendor: Annotated[str, Meta(min_length=1)]
    model: Annotated[str, Meta(min_length=1)]
    firmware: Annotated[list[str], Meta(description="firmware versions the map applies to; '*' for any")] = (
        msgspec.field(default_factory=lambda: ["*"])
    )
    source: Annotated[str, Meta(min_length=1, description="the public vendor document the map comes from")]
    protocol: Annotated[str, Meta(min_length=1)]
    description: str = ""
    protocol_config: Annotated[
        dict[str, Any], Meta(description="factory-default settings, e.g. baudrate")
    ] = {}
    visitor_defaults: Annotated[
        dict[str, Any], Meta(description="merged under every property's visitor")
    ] = {}
    properties: Annotated[list[ProfileProperty], Meta(min_length=1)]


@dataclass(frozen=True)
class Profile:
    """A loaded profile: a DeviceModel document, the protocol, a visitor per property, its origin."""

    ref: str
    path: Path
    vendor: str
    product: str
    firmware: tuple[str, ...]
    source: str
    protocol: str
    protocol_config: dict[str, Any]
    model: DeviceModel
    visitors: dict[str, dict[str, Any]]


def search_path() -> list[Path]:
    """Directories searched for profiles, in order."""
    dirs = [Path(p) for p in os.environ.get(PROFILE_PATH_VARIABLE, "").split(os.pathsep) if p]
    dirs.append(Path(gateway.__file__).resolve().parents[1] / "firmware-profiles")
    return dirs


def find_profile(ref: str) -> Path:
    if not _REF.match(ref):
        raise ConfigError(f"profile {ref!r}: expected VENDOR/MODEL in lowercase, e.g. eastron/sdm630")
    dirs = search_path()
    for directory in dirs:
        for suffix in (".yaml", ".yml"):
            candidate = directory / f"{ref}{suffix}"
            if candidate.is_file():
                return candidate
    searched = ", ".join(str(d) for d in dirs)
    raise ConfigError(f"unknown profile {ref!r} (searched {searched})")


def load_profile(ref: str) -> Profile:
    """The profile named `ref` (`vendor/model`); a ConfigError names the ref or file when not."""
    path = find_profile(ref)
    return read_profile(path, ref)


def read_profile(path: Path, ref: str | None = None) -> Profile:
    """Read and check one profile file."""
    ref = ref or f"{path.parent.name}/{path.stem}"
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"profile {ref}: {path}: cannot read: {exc}") from exc
    for where, value in non_finite_numbers(raw):
        raise ConfigError(f"profile {ref}: {path}: {where}: expected a finite number, got {value!r}")
    try:
        document = msgspec.convert(raw, ProfileDocument)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"profile {ref}: {path}: {exc}") from exc
    names = [p.name for p in document.properties]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"profile {ref}: {path}: duplicate properties {', '.join(duplicates)}")
    model = DeviceModel(
        name=ref.replace("/", "-").replace("_", "-"),
        description=f"{document.vendor} {document.model}: {document.description}".rstrip(": "),
        labels={"vendor": _label(document.vendor), "product": _label(document.model)},
        protocol=document.protocol,
        properties=[
            PropertyModel(**{f: getattr(p, f) for f in PropertyModel.__struct_fields__}) for p in document.properties
        ],
    )
    visitors = {p.name: {**document.visitor_defaults, **p.visitor} for p in document.properties}
    return Profile(
        ref,
        path,
        document.vendor,
        document.model,
        tuple(document.firmware),
        document.source,
        document.protocol,
        dict(document.protocol_config),
        model,
        visitors,
    )


def list_profiles() -> list[str]:
    """Every profile ref found on the search path (the first of a name wins)."""
    refs: set[str] = set()
    for directory in search_path():
        if directory.is_dir():
            refs.update(f"{p.parent.name}/{p.stem}" for p in directory.glob("*/*.y*ml"))
    return sorted(refs)


def _label(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:63]
