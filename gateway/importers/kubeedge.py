"""KubeEdge `devices.kubeedge.io` (v1beta1, v1alpha2 Modbus) and `rules.kubeedge.io` documents to fieldgate.

Whatever cannot be carried over (other protocols, methods, push methods, node selectors, runtime status) is
named in a warning: one line each, with the file, the document and the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from gateway.errors import ConfigError
from gateway.importers import ImportResult
from gateway.resources.durations import format_duration
from gateway.resources.endpoints import BUILTIN_ENDPOINT_TYPES

_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME = re.compile(r"^[a-z0-9]+([-.][a-z0-9]+)*$")
NANOSECONDS_FROM = 1_000_000  # a cycle this large is nanoseconds (older mappers), smaller ones milliseconds
MODEL_TYPES = {
    "int": "int",
    "float": "float",
    "double": "double",
    "string": "string",
    "boolean": "boolean",
    "bool": "boolean",
    "bytes": "bytes",
}
REGISTERS = {
    "CoilRegister": "Coil",
    "Coil": "Coil",
    "DiscreteInputRegister": "DiscreteInput",
    "DiscreteInput": "DiscreteInput",
    "HoldingRegister": "HoldingRegister",
    "InputRegister": "InputRegister",
}
PARITY = {"none": "N", "n": "N", "even": "E", "e": "E", "odd": "O", "o": "O"}
ENDPOINT_TYPES = {"rest", "eventbus", "servicebus"}
_VISITOR_KEYS_USED = {"register", "offset", "limit", "scale", "isSwap", "isRegisterSwap", "dataType"}


class _Doc:
    """One source document: where it came from, for warnings."""

    def __init__(self, result: ImportResult, file: str, index: int, kind: str, name: str) -> None:
        self.result, self.file, self.index, self.kind, self.name = result, file, index, kind, name

    def warn(self, path: str, message: str) -> None:
        self.result.warnings.append(f"{self.file}: document {self.index} ({self.kind} {self.name}): {path}: {message}")


def import_files(paths: list[Path]) -> ImportResult:
    """Convert every KubeEdge document of the files; raise ConfigError for a file that cannot be read."""
    result = ImportResult()
    for path in paths:
        try:
            raw_docs = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=_SafeLoader))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read: {exc}") from exc
        docs = result.documents.setdefault(str(path), [])
        for index, raw in enumerate(raw_docs, 1):
            if raw is None:
                continue
            converted = convert_document(raw, result, str(path), index)
            if converted is not None:
                docs.append(converted)
    return result


def convert_document(raw: Any, result: ImportResult, file: str, index: int) -> dict[str, Any] | None:
    """One KubeEdge document as a fieldgate document, or None (with a warning) when it has no equivalent."""
    if not isinstance(raw, dict):
        result.warnings.append(f"{file}: document {index}: not a mapping; skipped")
        return None
    api = str(raw.get("apiVersion", ""))
    kind = str(raw.get("kind", ""))
    metadata = raw.get("metadata") or {}
    doc = _Doc(result, file, index, kind or "?", str(metadata.get("name", "?")))
    spec = raw.get("spec") or {}
    group = api.split("/")[0]
    if group == "devices.kubeedge.io" and kind == "DeviceModel":
        return _device_model(doc, api, metadata, spec)
    if group == "devices.kubeedge.io" and kind == "Device":
        return _device(doc, api, metadata, spec, raw.get("status") or {})
    if group == "rules.kubeedge.io" and kind == "RuleEndpoint":
        return _endpoint(doc, metadata, spec)
    if group == "rules.kubeedge.io" and kind == "Rule":
        return _route(doc, metadata, spec)
    doc.warn("$.kind", f"{api} {kind} has no fieldgate equivalent; skipped")
    return None


def _header(doc: _Doc, kind: str, metadata: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "name": _name(doc, "$.metadata.name", str(metadata.get("name", "")))}
    namespace = metadata.get("namespace")
    if namespace and namespace != "default":
        out["namespace"] = _name(doc, "$.metadata.namespace", str(namespace))
    labels = metadata.get("labels") or {}
    if labels:
        out["labels"] = {str(k): str(v) for k, v in labels.items()}
    return out


def _name(doc: _Doc, path: str, name: str) -> str:
    if _NAME.match(name) and len(name) <= 253:
        return name
    fixed = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unnamed"
    doc.warn(path, f"{name!r} is not a valid fieldgate name; renamed to {fixed!r}")
    return fixed


# --- devices --------------------------------------------------------------------------------


def _device_model(doc: _Doc, api: str, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any] | None:
    out = _header(doc, "DeviceModel", metadata)
    protocol = str(spec.get("protocol", ""))
    if protocol and protocol != "modbus":
        doc.warn("$.spec.protocol", f"protocol {protocol!r} is not supported by fieldgate; model skipped")
        return None
    properties = []
    for i, prop in enumerate(spec.get("properties") or []):
        path = f"$.spec.properties[{i}]"
        if api.endswith("v1alpha2"):
            converted = _property_v1alpha2(doc, path, prop)
        else:
            converted = _property_v1beta1(doc, path, prop)
        if converted is not None:
            properties.append(converted)
    out["properties"] = properties
    return out


def _property_v1beta1(doc: _Doc, path: str, prop: dict[str, Any]) -> dict[str, Any] | None:
    raw_type = str(prop.get("type", "")).lower()
    model_type = MODEL_TYPES.get(raw_type)
    if model_type is None:
        doc.warn(f"{path}.type", f"type {prop.get('type')!r} of {prop.get('name')!r} is not supported; skipped")
        return None
    return _model_property(doc, path, prop, model_type, prop)


def _property_v1alpha2(doc: _Doc, path: str, prop: dict[str, Any]) -> dict[str, Any] | None:
    types = prop.get("type") or {}
    if not isinstance(types, dict) or len(types) != 1:
        doc.warn(f"{path}.type", f"expected one type of {prop.get('name')!r}; skipped")
        return None
    raw_type, details = next(iter(types.items()))
    model_type = MODEL_TYPES.get(str(raw_type).lower())
    if model_type is None:
        doc.warn(f"{path}.type", f"type {raw_type!r} of {prop.get('name')!r} is not supported; skipped")
        return None
    details = details or {}
    if "defaultValue" in details:
        doc.warn(
            f"{path}.type.{raw_type}.defaultValue",
            "a model has no default value in fieldgate; set `desired` on the device property instead",
        )
    return _model_property(doc, path, prop, model_type, details)


def _model_property(
    doc: _Doc, path: str, prop: dict[str, Any], model_type: str, details: dict[str, Any]
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": str(prop.get("name")), "type": model_type}
    access = str(details.get("accessMode", "ReadOnly"))
    out["access"] = "ReadWrite" if access == "ReadWrite" else "ReadOnly"
    if details.get("unit"):
        out["unit"] = str(details["unit"])
    for key in ("minimum", "maximum"):
        if details.get(key) not in (None, ""):
            try:
                out[key] = float(details[key])
            except (TypeError, ValueError):
                doc.warn(f"{path}.{key}", f"{details[key]!r} is not a number; dropped")
    if prop.get("description"):
        out["description"] = str(prop["description"])
    return out


def _device(
    doc: _Doc, api: str, metadata: dict[str, Any], spec: dict[str, Any], status: dict[str, Any]
) -> dict[str, Any] | None:
    out = _header(doc, "Device", metadata)
    model_ref = (spec.get("deviceModelRef") or {}).get("name")
    if not model_ref:
        doc.warn("$.spec.deviceModelRef", "no model named; device skipped")
        return None
    out["model"] = _name(doc, "$.spec.deviceModelRef.name", str(model_ref))
    legacy = api.endswith("v1alpha2")
    protocol = _protocol_v1alpha2(doc, spec) if legacy else _protocol_v1beta1(doc, spec)
    if protocol is None:
        return None
    out["protocol"] = protocol
    if spec.get("nodeName"):
        out["node"] = _name(doc, "$.spec.nodeName", str(spec["nodeName"]))
    if spec.get("nodeSelector"):
        doc.warn(
            "$.spec.nodeSelector",
            "node selectors are not carried over; the device runs on the gateway that loads it",
        )
    if spec.get("methods"):
        names = ", ".join(str(m.get("name")) for m in spec["methods"])
        doc.warn("$.spec.methods", f"device methods ({names}) are not carried over; set desired values instead")
    desired_in_status = {
        str(t.get("propertyName")): (t.get("desired") or {}).get("value")
        for t in status.get("twins") or []
        if (t.get("desired") or {}).get("value") is not None
    }
    if status:
        doc.warn(
            "$.status",
            "runtime status (reported twins) is not imported" + ("; desired values are" if desired_in_status else ""),
        )
    properties = []
    items = spec.get("propertyVisitors" if legacy else "properties") or []
    for i, item in enumerate(items):
        path = f"$.spec.{'propertyVisitors' if legacy else 'properties'}[{i}]"
        converted = _device_property(doc, path, item, legacy)
        if converted is None:
            continue
        if converted["name"] in desired_in_status and "desired" not in converted:
            converted["desired"] = desired_in_status[converted["name"]]
        properties.append(converted)
    out["properties"] = properties
    return out


def _protocol_v1beta1(doc: _Doc, spec: dict[str, Any]) -> dict[str, Any] | None:
    protocol = spec.get("protocol") or {}
    name = str(protocol.get("protocolName", ""))
    config = protocol.get("configData") or {}
    if name != "modbus":
        doc.warn("$.spec.protocol.protocolName", f"protocol {name!r} is not supported by fieldgate; device skipped")
        return None
    mode = str(config.get("communicateMode", "TCP" if "ip" in config else "RTU")).upper()
    unit = config.get("slaveID", 1)
    if mode == "TCP":
        if not config.get("ip"):
            doc.warn("$.spec.protocol.configData.ip", "a TCP device needs an ip; device skipped")
            return None
        tcp: dict[str, Any] = {
            "host": str(config["ip"]),
            "port": int(config.get("port", 502)),
            "unit": int(unit),
        }
        return {"name": "modbus-tcp", "config": tcp}
    return _rtu(doc, "$.spec.protocol.configData", config, unit)


def _protocol_v1alpha2(doc: _Doc, spec: dict[str, Any]) -> dict[str, Any] | None:
    protocol = spec.get("protocol") or {}
    modbus = protocol.get("modbus")
    if modbus is None:
        others = ", ".join(k for k in protocol if k not in ("common", "modbus")) or "none"
        doc.warn("$.spec.protocol", f"protocol {others} is not supported by fieldgate; device skipped")
        return None
    unit = modbus.get("slaveID", 1)
    common = protocol.get("common") or {}
    if common.get("customizedValues"):
        doc.warn("$.spec.protocol.common.customizedValues", "customized values are not carried over")
    if common.get("tcp"):
        tcp = common["tcp"]
        return {
            "name": "modbus-tcp",
            "config": {"host": str(tcp.get("ip")), "port": int(tcp.get("port", 502)), "unit": int(unit)},
        }
    return _rtu(doc, "$.spec.protocol.common.com", common.get("com") or {}, unit)


def _rtu(doc: _Doc, path: str, com: dict[str, Any], unit: Any) -> dict[str, Any] | None:
    port = com.get("serialPort")
    if not port:
        doc.warn(f"{path}.serialPort", "an RTU device needs a serial port; device skipped")
        return None
    config: dict[str, Any] = {"port": str(port), "unit": int(unit)}
    if com.get("baudRate"):
        config["baudrate"] = int(com["baudRate"])
    if com.get("dataBits"):
        config["bytesize"] = int(com["dataBits"])
    if com.get("parity"):
        parity = PARITY.get(str(com["parity"]).lower())
        if parity is None:
            doc.warn(f"{path}.parity", f"parity {com['parity']!r} is unknown; using none")
        config["parity"] = parity or "N"
    if com.get("stopBits"):
        config["stopbits"] = int(com["stopBits"])
    return {"name": "modbus-rtu", "config": config}


def _device_property(doc: _Doc, path: str, item: dict[str, Any], legacy: bool) -> dict[str, Any] | None:
    name = str(item.get("propertyName" if legacy else "name", ""))
    if legacy:
        visitor_raw = item.get("modbus")
        visitor_path = f"{path}.modbus"
    else:
        visitors = item.get("visitors") or {}
        visitor_raw = visitors.get("configData")
        visitor_path = f"{path}.visitors.configData"
    if not isinstance(visitor_raw, dict) or "register" not in visitor_raw:
        doc.warn(visitor_path, f"property {name!r} has no Modbus visitor; skipped")
        return None
    visitor = _visitor(doc, visitor_path, visitor_raw)
    if visitor is None:
        return None
    out: dict[str, Any] = {"name": name}
    collect = cycle_seconds(item["collectCycle"]) if item.get("collectCycle") else None
    report = cycle_seconds(item["reportCycle"]) if item.get("reportCycle") else None
    if report is not None and report < (collect or 1.0):
        doc.warn(
            f"{path}.reportCycle",
            f"reports cannot come more often than readings; reporting every {format_duration(collect or 1.0)}",
        )
        report = collect or 1.0
    if collect is not None:
        out["collect_interval"] = format_duration(collect)
    if report is not None:
        out["report_interval"] = format_duration(report)
    desired = (item.get("desired") or {}).get("value")
    if desired is not None:
        out["desired"] = desired
    if item.get("pushMethod"):
        doc.warn(f"{path}.pushMethod", "push methods are not carried over; add a Route to an Endpoint instead")
    out["visitor"] = visitor
    return out


def _visitor(doc: _Doc, path: str, raw: dict[str, Any]) -> dict[str, Any] | None:
    register = REGISTERS.get(str(raw.get("register")))
    if register is None:
        doc.warn(f"{path}.register", f"register {raw.get('register')!r} is unknown; property skipped")
        return None
    out: dict[str, Any] = {"register": register, "offset": int(raw.get("offset", 0))}
    for key in sorted(set(raw) - _VISITOR_KEYS_USED):
        if key in ("max", "min"):
            doc.warn(f"{path}.{key}", "not carried over; the model's minimum/maximum apply")
        else:
            doc.warn(f"{path}.{key}", "not carried over")
    if register in ("Coil", "DiscreteInput"):
        return out
    limit = int(raw.get("limit", 1) or 1)
    data_type = str(raw.get("dataType", "int")).lower()
    if data_type == "string":
        out.update(type="string", length=limit)
    elif data_type in ("boolean", "bool"):
        out["bit"] = 0
        doc.warn(f"{path}.dataType", "a boolean in a register is read as its bit 0")
    elif data_type in ("float", "double") and limit >= 2:
        out["type"] = "float32" if limit == 2 else "float64"
    else:
        out["type"] = {1: "int16", 2: "int32", 4: "int64"}.get(limit, "int16")
        if limit not in (1, 2, 4):
            doc.warn(f"{path}.limit", f"limit {limit} does not fit an integer; reading 1 register")
    scale = raw.get("scale")
    if scale not in (None, "", 1, 1.0):
        out["scale"] = float(scale)
    if raw.get("isSwap"):
        out["byte_order"] = "little"
    if raw.get("isRegisterSwap"):
        out["word_order"] = "little"
    return out


def cycle_seconds(value: Any) -> float:
    """A KubeEdge cycle in seconds: milliseconds, or nanoseconds when it is that large (older mappers)."""
    number = float(value)
    return number / 1e9 if number >= NANOSECONDS_FROM else number / 1000.0


# --- rules --------------------------------------------------------------------------------


def _endpoint(doc: _Doc, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any] | None:
    out = _header(doc, "Endpoint", metadata)
    kind = str(spec.get("ruleEndpointType", "")).lower()
    if kind not in ENDPOINT_TYPES:
        doc.warn(
            "$.spec.ruleEndpointType",
            f"endpoint type {spec.get('ruleEndpointType')!r} is not supported; skipped",
        )
        return None
    out["type"] = kind
    properties = spec.get("properties") or {}
    taken = BUILTIN_ENDPOINT_TYPES[kind].properties.__struct_fields__
    for key in sorted(str(k) for k in properties if str(k) not in taken):
        doc.warn(f"$.spec.properties.{key}", f"a {kind} endpoint has no property {key!r}; left out")
    kept = {str(k): str(v) for k, v in properties.items() if str(k) in taken}
    if kept:
        out["properties"] = kept
    return out


def _route(doc: _Doc, metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any] | None:
    out = _header(doc, "Route", metadata)
    for key in ("source", "target"):
        if not spec.get(key):
            doc.warn(f"$.spec.{key}", f"a rule needs a {key}; skipped")
            return None
        out[key] = _name(doc, f"$.spec.{key}", str(spec[key]))
        resource = spec.get(f"{key}Resource") or {}
        if resource:
            out[f"{key}_resource"] = {str(k): str(v) for k, v in resource.items()}
    return out
