"""Documents from the model and device forms of both web apps: one row of fields per property (`prop-<i>-<field>`,
`rows` of them, at most MAX_ROWS), small YAML values in single fields, and numbers named when they are not."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from gateway.decoding import check_depth
from gateway.errors import ConfigError

PROPERTY_TYPES = ("int", "float", "double", "string", "boolean", "bytes")
MAX_ROWS = 500  # rows a form may say it has: the count is the browser's word, and a loop runs that often

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: fast, and it limits nesting
LabelParser = Callable[[str], dict[str, str]]


def row_count(form: Mapping[str, str], key: str = "rows") -> int:
    """How many rows the form says it has: ASCII digits only, at most MAX_ROWS (anything else counts as none)."""
    text = str(form.get(key, "")).strip()
    return min(int(text), MAX_ROWS) if text.isascii() and text.isdigit() else 0


def flow(value: Any) -> str:
    """A value as one line of YAML, for a form field."""
    if value is None:
        return ""
    return str(yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000)).strip().removesuffix(
        "\n...").strip()


def flow_yaml(text: str, field: str) -> Any:
    """A form field's YAML (`{unit: 1, address: 40001}`), None when empty; ConfigError naming the field."""
    text = text.strip()
    if not text:
        return None
    try:
        value = yaml.load(text, Loader=_SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{field}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except RecursionError:
        raise ConfigError(f"{field}: invalid YAML: nested too deeply") from None
    check_depth(value, field)  # parsed, yet too deep for what walks a document later
    return value


def number(value: str, field: str) -> float | int | None:
    value = value.strip()
    if not value:
        return None
    try:
        parsed = float(value)
    except ValueError:
        raise ConfigError(f"{field}: {value!r} is not a number") from None
    if not math.isfinite(parsed):
        raise ConfigError(f"{field}: expected a finite number, got {value!r}")
    return int(parsed) if parsed.is_integer() and "." not in value else parsed


def document_header(kind: str, form: Mapping[str, str], labels: LabelParser, *optional: str) -> dict[str, Any]:
    """kind, name, namespace, and description, labels (read by the app's own `labels`) and the given fields when the
    form has them."""
    document: dict[str, Any] = {"kind": kind, "name": form.get("name", "").strip(),
                                "namespace": form.get("namespace", "").strip() or "default"}
    for field in ("description", "labels", *optional):
        value = form.get(field, "").strip()
        if value:
            document[field] = labels(value) if field == "labels" else value
    return document


def _row(form: Mapping[str, str], i: int) -> Callable[[str], str]:
    return lambda field: str(form.get(f"prop-{i}-{field}", "")).strip()


def _cells(form: Mapping[str, str]) -> list[Callable[[str], str]]:
    """Per row that has a name, a reader of that row's fields."""
    rows = [_row(form, i) for i in range(row_count(form))]
    return [cell for cell in rows if cell("name")]


def model_from_form(form: Mapping[str, str], labels: LabelParser) -> dict[str, Any]:
    """A DeviceModel document from the model form (empty rows skipped)."""
    document = document_header("DeviceModel", form, labels, "protocol")
    properties = []
    for cell in _cells(form):
        prop: dict[str, Any] = {"name": cell("name"), "type": cell("type") or "float",
                                "access": cell("access") or "ReadOnly"}
        if cell("unit"):
            prop["unit"] = cell("unit")
        for bound in ("minimum", "maximum"):
            value = number(cell(bound), f"property {cell('name')}: {bound}")
            if value is not None:
                prop[bound] = value
        properties.append(prop)
    document["properties"] = properties
    return document


def device_from_form(form: Mapping[str, str], labels: LabelParser) -> dict[str, Any]:
    """A Device document from the device form (per property: intervals, desired value and visitor as YAML)."""
    document = document_header("Device", form, labels, "model", "node")
    protocol_config = flow_yaml(form.get("protocol_config", ""), "protocol config") or {}
    document["protocol"] = {"name": form.get("protocol", "").strip(), "config": protocol_config}
    if form.get("timeout", "").strip():
        document["timeout"] = form["timeout"].strip()
    properties = []
    for cell in _cells(form):
        prop: dict[str, Any] = {"name": cell("name")}
        for interval in ("collect_interval", "report_interval"):
            if cell(interval):
                prop[interval] = cell(interval)
        if cell("desired"):
            prop["desired"] = flow_yaml(cell("desired"), f"property {cell('name')}: desired")
        visitor = flow_yaml(cell("visitor"), f"property {cell('name')}: visitor")
        if visitor is not None:
            prop["visitor"] = visitor
        properties.append(prop)
    document["properties"] = properties
    return document
