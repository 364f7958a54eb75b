"""Local editing of resources from the UI: documents from forms, YAML and CSV uploads, through the runtime.

The runtime validates exactly like `fieldgate check`, applies, and refuses resources owned by a configuration
file or the registry; this module only turns form fields and uploads into documents and previews.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.api import GatewayAPI
from gateway.errors import ConfigError, ResourceError
from gateway.importers import csv as csv_import
from gateway.resources.loader import document_value
from gateway.webkit import forms

EDITABLE_KINDS = ("DeviceModel", "Device", "Endpoint", "Route")
MAX_UPLOAD_BYTES = 2 << 20
MAX_LABEL = 100  # characters of an uploaded file's name that messages show


def owner(gateway: GatewayAPI, kind: str, namespace: str, name: str) -> str | None:
    """"file", "local", "registry", or None for a resource that does not exist."""
    result = gateway.resources.resource_owner(kind, namespace, name)
    return None if result is None else str(result)


def running_document(gateway: GatewayAPI, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The document as it was written (durations as text and all), from the running configuration."""
    entry = gateway.config.raw.get((kind, namespace, name))
    raw = document_value(entry[1]) if entry is not None else None
    if not isinstance(raw, dict):
        return None
    document: dict[str, Any] = {"kind": kind, **{k: v for k, v in raw.items() if k != "kind"}}
    return document


def read_only_reason(found_owner: str | None) -> str:
    if found_owner == "file":
        return "defined in a configuration file: change it there (read-only here)"
    if found_owner == "registry":
        return "managed by the registry: change it there (read-only here)"
    return ""


async def apply_yaml(gateway: GatewayAPI, text: str, *, actor: str, address: str) -> list[str]:
    """Validate and apply YAML documents; ResourceError/ConfigError carry the problems, one line each."""
    changed = await gateway.resources.apply_documents(text, actor=actor, address=address)
    return [str(item) for item in changed]


async def apply_documents(gateway: GatewayAPI, documents: list[dict[str, Any]], *, actor: str, address: str
                          ) -> list[str]:
    return await apply_yaml(gateway, dump_yaml(documents), actor=actor, address=address)


async def delete(gateway: GatewayAPI, kind: str, namespace: str, name: str, *, actor: str, address: str) -> None:
    await gateway.resources.delete_resource(kind, namespace, name, actor=actor, address=address)


def dump_yaml(documents: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=None, allow_unicode=True)


def problems_of(exc: Exception) -> list[str]:
    if isinstance(exc, ResourceError):
        return list(exc.problems)
    return str(exc).splitlines() or [type(exc).__name__]


# --- previews of uploads -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PreviewRow:
    kind: str
    namespace: str
    name: str
    action: str  # "create", "update" or why it cannot be applied


@dataclass(frozen=True)
class Preview:
    yaml_text: str
    rows: list[PreviewRow]

    @property
    def applicable(self) -> bool:
        return bool(self.rows) and all(row.action in ("create", "update") for row in self.rows)


def preview(gateway: GatewayAPI, yaml_text: str) -> Preview:
    """Check the documents as a whole (raises ResourceError) and say what applying each would do."""
    documents = gateway.resources.validate_yaml(yaml_text)
    rows = []
    for document in documents:
        found = owner(gateway, document.kind, document.namespace, document.name)
        action = read_only_reason(found) or ("update" if found else "create")
        rows.append(PreviewRow(document.kind, document.namespace, document.name, action))
    return Preview(yaml_text, rows)


def upload_label(filename: str) -> str:
    """How messages name an uploaded file: its last path part, printable, at most MAX_LABEL characters."""
    name = "".join(c for c in filename.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable())
    return name if len(name) <= MAX_LABEL else name[:MAX_LABEL - 1] + "\u2026"


async def csv_to_yaml(filename: str, data: bytes, template: dict[str, Any] | None) -> str:
    """Devices from a CSV inventory (see gateway.importers.csv), as YAML; errors name the uploaded file."""
    label = upload_label(filename) or "devices.csv"

    def convert() -> str:
        with tempfile.TemporaryDirectory(prefix="fieldgate-upload-") as tmp:
            # not the uploaded name: that may be too long for the file system, or no file name at all
            path = Path(tmp) / "upload.csv"
            path.write_bytes(data)
            try:
                result = csv_import.import_file(path, template=template)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace(str(path), label)) from None
            return dump_yaml(result.all_documents())

    return await asyncio.to_thread(convert)


def upload_text(data: bytes, filename: str) -> str:
    if len(data) > MAX_UPLOAD_BYTES:
        raise ConfigError(f"{upload_label(filename)}: larger than {MAX_UPLOAD_BYTES >> 20} MB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{upload_label(filename)}: not UTF-8 text") from None


# --- forms ---------------------------------------------------------------------------------------------------


def labels_from_text(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.replace("\n", ";").split(";"))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"labels: expected key=value pairs separated by ';', got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def labels_to_text(labels: Mapping[str, str]) -> str:
    return "; ".join(f"{k}={v}" for k, v in labels.items())


def model_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """A DeviceModel document from the model form (gateway.webkit.forms), labels as this UI writes them."""
    return forms.model_from_form(form, labels_from_text)


def device_from_form(form: Mapping[str, str]) -> dict[str, Any]:
    """A Device document from the device form (gateway.webkit.forms), labels as this UI writes them."""
    return forms.device_from_form(form, labels_from_text)
