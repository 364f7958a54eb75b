"""Loading resource documents from YAML files and checking them as a whole.

Every finding is one line naming the file, the document (index, kind and name) and the field path, e.g.
`plant.yaml: document 3 (Device boiler-1): $.properties[0].visitor.offset: Expected int >= 0, got -1`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi
import yaml

from gateway.decoding import check_depth
from gateway.errors import ConfigError, ResourceError, ValueRejected
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol
from gateway.resources.endpoints import (
    BUILTIN_ENDPOINT_TYPES,
    EndpointType,
    ImpliedRoute,
    field_of_message,
    older_form_note,
    resolve_endpoint,
    route_problems,
    upgrade_spellings,
)
from gateway.resources.eventbus_checks import eventbus_problems
from gateway.resources.schema import (
    AnyDocument,
    BatchWorkload,
    Device,
    DeviceModel,
    DeviceProperty,
    Document,
    Endpoint,
    Gateway,
    PropertyModel,
    Route,
    Service,
    Workload,
    dec_hook,
    non_finite_numbers,
)
from gateway.resources.schema import ConfigItem as ConfigItemDoc
from gateway.resources.schema import Secret as SecretDoc
from gateway.resources.values import coerce
from gateway.resources.workload_checks import service_problems, workload_problems

INTERNED_LENGTH = 64  # strings up to this long are shared between documents (names, types, intervals, units)


class _SafeLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, with each short string shared: 100 devices of 100 properties write `HoldingRegister`,
    `float32` and `1s` 10,000 times each, and the running configuration keeps what they were read into."""


def _shared_string(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> str:
    value = loader.construct_scalar(node)
    return sys.intern(value) if len(value) <= INTERNED_LENGTH else value


_SafeLoader.add_constructor("tag:yaml.org,2002:str", _shared_string)
_MSGSPEC_PATH = re.compile(r"^(?P<message>.*) - at `(?P<path>\$[^`]*)`$", re.S)
_GOT_TYPE = re.compile(r", got \w+$")
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`$")
MIN_INTERVAL = 0.01


LOCAL = "local"  # the source of documents created through the UI or the REST API (kept in the store)
REGISTRY = "registry"  # the source of documents the registry pushes (kept in the store: edge autonomy)


@dataclass(frozen=True)
class Source:
    """Where a document came from, for error messages."""

    file: str
    index: int  # 1-based within its file
    label: str = ""

    def prefix(self) -> str:
        label = f" ({self.label})" if self.label else ""
        return f"{self.file}: document {self.index}{label}"


@dataclass
class Config:
    """A checked set of documents, with every device bound to its model and protocol."""

    gateway: Gateway
    documents: list[Document] = field(default_factory=list)
    models: dict[tuple[str, str], DeviceModel] = field(default_factory=dict)
    devices: dict[str, BoundDevice] = field(default_factory=dict)
    endpoints: dict[tuple[str, str], Endpoint] = field(default_factory=dict)
    routes: dict[tuple[str, str], Route] = field(default_factory=dict)
    workloads: dict[tuple[str, str], Workload] = field(default_factory=dict)
    config_items: dict[tuple[str, str], ConfigItemDoc] = field(default_factory=dict)
    secrets: dict[tuple[str, str], SecretDoc] = field(default_factory=dict)
    services: dict[tuple[str, str], Service] = field(default_factory=dict)
    # every endpoint's type (its own, or the one it names in the older form) and its properties of that type
    endpoint_types: dict[tuple[str, str], str] = field(default_factory=dict)
    endpoint_properties: dict[tuple[str, str], msgspec.Struct] = field(default_factory=dict)
    # the routes Endpoints in the older form imply, by endpoint; and a note on each such endpoint for the log
    implied_routes: dict[tuple[str, str], ImpliedRoute] = field(default_factory=dict)
    older_forms: dict[tuple[str, str], str] = field(default_factory=dict)
    # (kind, namespace, name) -> where the document came from and its raw form (a PackedDocument where it packs:
    # `document_value` reads either), to re-check it with changes
    raw: dict[tuple[str, str, str], tuple[Source, Any]] = field(default_factory=dict)

    def endpoints_of(self, endpoint_type: str) -> dict[tuple[str, str], Any]:
        """The properties (that type's Struct) of every endpoint of a type, by (namespace, name)."""
        return {key: self.endpoint_properties[key] for key, name in sorted(self.endpoint_types.items())
                if name == endpoint_type}


_PACK = msgspec.msgpack.Encoder()
_UNPACK = msgspec.msgpack.Decoder()


class PackedDocument:
    """A raw document as MessagePack bytes. The running configuration keeps every document as written, to check it
    again with each change; as the YAML loader's dicts and strings, 100 devices of 100 properties held 10 MB, packed
    a tenth of it. `value()` gives a fresh copy to read or change."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    @classmethod
    def of(cls, raw: Any) -> PackedDocument | Any:
        """`raw` packed, or `raw` itself where packing would change it (a value MessagePack cannot carry as it is,
        such as an integer beyond 64 bits or a date)."""
        try:
            packed = cls(_PACK.encode(raw))
        except (TypeError, ValueError, OverflowError):
            return raw
        return packed if packed.value() == raw else raw

    def value(self) -> Any:
        return _UNPACK.decode(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PackedDocument) and other.data == self.data

    def __hash__(self) -> int:
        return hash(self.data)


def document_value(raw: Any) -> Any:
    """The raw document of a `Config.raw` entry as Python values, packed or not."""
    return raw.value() if isinstance(raw, PackedDocument) else raw


def yaml_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory")
    return [path]


def load_path(path: str | Path, protocols: Mapping[str, type[Protocol]],
              endpoint_types: Mapping[str, EndpointType] | None = None) -> Config:
    """Load a YAML file or a directory of them and check the documents as a whole (endpoints against the given
    endpoint types, the built-in ones by default)."""
    return check_documents(read_path(path), protocols, endpoint_types)


def read_path(path: str | Path) -> list[tuple[Source, Any]]:
    """The raw documents of a YAML file or a directory of them, each with its source (YAML syntax checked)."""
    return read_files(yaml_files(Path(path)))


def read_files(files: list[Path], max_bytes: int | None = None) -> list[tuple[Source, Any]]:
    """The raw documents of YAML files, each with its source; ResourceError lists every file that cannot be read,
    is larger than `max_bytes` or is not YAML."""
    raw: list[tuple[Source, Any]] = []
    problems: list[str] = []
    for file in files:
        try:
            if max_bytes is not None and file.stat().st_size > max_bytes:
                problems.append(f"{file}: larger than {max_bytes} bytes")
                continue
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{file}: cannot read: {exc}")
            continue
        try:
            raw.extend(parse_yaml(text, str(file)))
        except ResourceError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ResourceError(problems)
    return raw


def parse_yaml(text: str, file: str) -> list[tuple[Source, Any]]:
    """The documents of one YAML text, each with its source; empty documents are skipped."""
    try:
        loaded = list(yaml.load_all(text, Loader=_SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ResourceError([f"{file}: {where}invalid YAML: {problem}"]) from None
    except RecursionError:
        raise ResourceError([f"{file}: invalid YAML: nested too deeply"]) from None
    problems = []
    for index, doc in enumerate(loaded, start=1):
        try:  # deep enough to parse, yet to break what walks a document later (YAML dumps, pages)
            check_depth(doc, f"{file}: document {index}")
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ResourceError(problems)
    return [(Source(file, index), doc) for index, doc in enumerate(loaded, start=1) if doc is not None]


def check_documents(raw: Iterable[tuple[Source, Any]], protocols: Mapping[str, type[Protocol]],
                    endpoint_types: Mapping[str, EndpointType] | None = None) -> Config:
    """Decode raw documents into Structs, then run the checks across documents; raise ResourceError."""
    checker = _Checker(protocols, BUILTIN_ENDPOINT_TYPES if endpoint_types is None else endpoint_types)
    for source, doc in raw:
        checker.decode(source, doc)
    return checker.finish()


def format_validation_error(exc: msgspec.ValidationError, raw: Any, base_path: str = "$") -> str:
    """`$.a.b: Expected int >= 0, got -1` from a msgspec error, with the path prefixed by `base_path`."""
    text = str(exc)
    match = _MSGSPEC_PATH.match(text)
    message, path = (match["message"], match["path"]) if match else (text, "$")
    message = message.replace("`", "")
    if message.startswith("Expected") and (", got" not in message or _GOT_TYPE.search(message)):
        found, value = _lookup(raw, path)
        if found:  # msgspec names the type it got; the value itself says more
            message = _GOT_TYPE.sub("", message) + f", got {_short(value)}"
    full = base_path + path[1:]
    return f"{full}: {message}"


def convert_properties(endpoint_type: EndpointType, raw: Mapping[str, Any]) -> msgspec.Struct:
    """An endpoint's properties as its type's Struct (numbers given as strings accepted, older spellings read);
    ConfigError `$.properties.<field>: <problem>` otherwise."""
    properties = upgrade_spellings(endpoint_type.properties, dict(raw))
    try:
        return msgspec.convert(properties, endpoint_type.properties, strict=False, dec_hook=dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_properties_problem(exc, properties, endpoint_type)) from None


def _properties_problem(exc: msgspec.ValidationError, raw: Any, endpoint_type: EndpointType) -> str:
    text = str(exc)
    match = _MSGSPEC_PATH.match(text)
    message, path = (match["message"], match["path"]) if match else (text, "$")
    base = "$.properties" + path[1:]
    if missing := _MISSING.match(message):
        what = _field_description(endpoint_type.properties, missing["field"]) if path == "$" else ""
        return f"{base}.{missing['field']}: a {endpoint_type.name} endpoint needs `{missing['field']}`{what}"
    if unknown := _UNKNOWN.match(message):
        taken = ", ".join(endpoint_type.properties.__struct_fields__) if path == "$" else ""
        return (f"{base}.{unknown['field']}: not a property of a {endpoint_type.name} endpoint"
                + (f" (it takes: {taken})" if taken else " (it takes none)" if path == "$" else ""))
    if path == "$" and (named := field_of_message(endpoint_type.properties, message)):
        return f"$.properties.{named[0]}: {named[1]}"
    return format_validation_error(exc, raw, "$.properties")


def _field_description(struct: type[msgspec.Struct], name: str) -> str:
    info = mi.type_info(struct)
    for item in getattr(info, "fields", ()):
        if item.name == name and isinstance(item.type, mi.Metadata):
            description = (item.type.extra_json_schema or {}).get("description", "")
            return f" ({description})" if description else ""
    return ""


def _lookup(raw: Any, path: str) -> tuple[bool, Any]:
    node = raw
    for key, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path[1:]):
        try:
            node = node[int(index)] if index else node[key]
        except (KeyError, IndexError, TypeError):
            return False, None
    return True, node


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else msgspec.json.encode(value).decode(errors="replace")
    return text if len(text) <= 60 else text[:57] + "..."


class _Checker:
    def __init__(self, protocols: Mapping[str, type[Protocol]], endpoint_types: Mapping[str, EndpointType]) -> None:
        self.protocols = protocols
        self.endpoint_types = endpoint_types
        self.problems: list[str] = []
        self.docs: list[tuple[Source, Document, Any, Any]] = []  # source, decoded, raw value, raw as given

    def fail(self, source: Source, path: str, message: str) -> None:
        self.problems.append(f"{source.prefix()}: {path}: {message}" if path else f"{source.prefix()}: {message}")

    def decode(self, source: Source, entry: Any) -> None:
        raw = document_value(entry)
        if isinstance(raw, dict):
            kind, name = raw.get("kind"), raw.get("name")
            if isinstance(kind, str) and isinstance(name, str):
                source = Source(source.file, source.index, f"{kind} {name}")
        else:
            self.fail(source, "$", f"Expected a mapping (a resource document), got {type(raw).__name__}")
            return
        non_finite = non_finite_numbers(raw)
        for path, value in non_finite:
            self.fail(source, path, f"expected a finite number, got {value!r} (NaN and infinities are no value)")
        if non_finite:
            return
        try:
            doc = msgspec.convert(raw, AnyDocument, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            self.problems.append(f"{source.prefix()}: {format_validation_error(exc, raw)}")
            return
        self.docs.append((source, doc, raw, entry))

    def finish(self) -> Config:
        seen: dict[tuple[str, str, str], Source] = {}
        gateways: list[tuple[Source, Gateway]] = []
        config = Config(gateway=Gateway(name="fieldgate"))
        for source, doc, _, entry in self.docs:
            if doc.key in seen:
                self.fail(source, "$.name", f"duplicate {doc.kind} {doc.namespace}/{doc.name} (first in "
                          f"{seen[doc.key].file}: document {seen[doc.key].index})")
                continue
            seen[doc.key] = source
            config.documents.append(doc)
            config.raw[doc.key] = (source, entry if isinstance(entry, PackedDocument) else PackedDocument.of(entry))
            if isinstance(doc, Gateway):
                gateways.append((source, doc))
            elif isinstance(doc, DeviceModel):
                config.models[(doc.namespace, doc.name)] = doc
            elif isinstance(doc, Endpoint):
                config.endpoints[(doc.namespace, doc.name)] = doc
            elif isinstance(doc, Route):
                config.routes[(doc.namespace, doc.name)] = doc
            elif isinstance(doc, Workload):
                config.workloads[(doc.namespace, doc.name)] = doc
            elif isinstance(doc, ConfigItemDoc):
                config.config_items[(doc.namespace, doc.name)] = doc
            elif isinstance(doc, SecretDoc):
                config.secrets[(doc.namespace, doc.name)] = doc
            elif isinstance(doc, Service):
                config.services[(doc.namespace, doc.name)] = doc
            elif isinstance(doc, BatchWorkload):
                self.fail(source, "$.kind", "a BatchWorkload is applied at the registry (`fieldgate registry apply`), "
                          "which runs it as Workloads on the nodes of its groups")
        if len(gateways) > 1:
            self.problems.append("more than one Gateway document: a node has one")
        elif gateways:
            gateway_source, config.gateway = gateways[0]
            for path, message in eventbus_problems(config.gateway.eventbus, config.gateway.namespace, config.secrets):
                self.fail(gateway_source, path, message)
        resolved = {key: self.resolve_endpoint(seen[("Endpoint", *key)], endpoint, config)
                     for key, endpoint in config.endpoints.items()}
        for source, doc, raw, _ in self.docs:
            if isinstance(doc, DeviceModel):
                self.check_model(source, doc)
            elif isinstance(doc, Device) and doc.key in seen and seen[doc.key] is source:
                bound = self.bind_device(source, doc, raw, config)
                if bound is not None:
                    config.devices[bound.id] = bound
            elif isinstance(doc, Route) and doc.key in seen and seen[doc.key] is source:
                for path, message in route_problems(doc, resolved, self.endpoint_types):
                    self.fail(source, path, message)
            elif isinstance(doc, Workload):
                settings = None if source.file == REGISTRY else config.gateway.workloads  # the node checks at start
                for path, message in workload_problems(doc, config.config_items, config.secrets, settings):
                    self.fail(source, path, message)
            elif isinstance(doc, Service):
                for path, message in service_problems(doc, config.workloads):
                    self.fail(source, path, message)
        if self.problems:
            raise ResourceError(self.problems)
        return config

    def resolve_endpoint(self, source: Source, endpoint: Endpoint, config: Config) -> EndpointType | None:
        """Read an endpoint against the endpoint types into `config`; its type, None when it is refused."""
        try:
            resolved = resolve_endpoint(endpoint, self.endpoint_types)
            properties = convert_properties(resolved.type, resolved.properties)
        except ConfigError as exc:
            path, _, message = str(exc).partition(": ")
            self.fail(source, path, message)
            return None
        key = (endpoint.namespace, endpoint.name)
        config.endpoint_types[key] = resolved.type.name
        config.endpoint_properties[key] = properties
        if resolved.older_plugin is not None:
            config.older_forms[key] = f"{source.prefix()}: {older_form_note(endpoint, resolved)}"
        if resolved.implied_route is not None:
            config.implied_routes[key] = resolved.implied_route
        return resolved.type

    def check_model(self, source: Source, model: DeviceModel) -> None:
        names: set[str] = set()
        for i, prop in enumerate(model.properties):
            path = f"$.properties[{i}]"
            if prop.name in names:
                self.fail(source, f"{path}.name", f"duplicate property {prop.name!r}")
            names.add(prop.name)
            if prop.minimum is not None and prop.maximum is not None and prop.minimum > prop.maximum:
                self.fail(source, f"{path}.minimum", f"minimum {prop.minimum:g} is above maximum {prop.maximum:g}")
            if (prop.minimum is not None or prop.maximum is not None) and prop.type not in ("int", "float", "double"):
                self.fail(source, f"{path}.minimum", f"minimum/maximum apply to numbers, not {prop.type}")
            if prop.max_length is not None and prop.type not in ("string", "bytes"):
                self.fail(source, f"{path}.max_length", f"max_length applies to strings and bytes, not {prop.type}")

    def bind_device(self, source: Source, device: Device, raw: Any, config: Config) -> BoundDevice | None:
        before = len(self.problems)
        model, profile_visitors = self.resolve_model(source, device, config)
        protocol = self.protocols.get(device.protocol.name)
        if protocol is None:
            known = ", ".join(sorted(self.protocols)) or "none"
            self.fail(source, "$.protocol.name", f"unknown protocol {device.protocol.name!r} (loaded: {known})")
        if model is None or protocol is None:
            return None
        try:
            protocol_config = msgspec.convert(device.protocol.config, protocol.config_type, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            self.problems.append(f"{source.prefix()}: "
                                 f"{format_validation_error(exc, device.protocol.config, '$.protocol.config')}")
            protocol_config = None
        by_name = {p.name: p for p in model.properties}
        specs = list(device.properties)
        if not specs and profile_visitors:
            specs = [DeviceProperty(name=name) for name in profile_visitors]
        bound: dict[str, BoundProperty] = {}
        for i, spec in enumerate(specs):
            path = f"$.properties[{i}]"
            prop_model = by_name.get(spec.name)
            if prop_model is None:
                self.fail(source, f"{path}.name", f"property {spec.name!r} is not in model "
                          f"{model.namespace}/{model.name}")
                continue
            if spec.name in bound:
                self.fail(source, f"{path}.name", f"duplicate property {spec.name!r}")
                continue
            visitor_raw = spec.visitor or profile_visitors.get(spec.name, {})
            try:
                visitor = msgspec.convert(visitor_raw, protocol.visitor_type, dec_hook=dec_hook)
            except msgspec.ValidationError as exc:
                self.problems.append(f"{source.prefix()}: "
                                     f"{format_validation_error(exc, visitor_raw, f'{path}.visitor')}")
                continue
            try:
                fits = protocol.visitor_types(visitor)
                protocol.check_visitor(visitor, prop_model)
            except ConfigError as exc:
                self.fail(source, f"{path}.visitor", str(exc))
                continue
            if prop_model.type not in fits:
                self.fail(source, f"{path}.visitor", f"the visitor gives {'/'.join(sorted(fits))}, which does "
                          f"not fit the model type {prop_model.type} of {spec.name!r}")
            self.check_intervals(source, path, spec)
            if spec.desired is not None:
                self.check_desired(source, path, prop_model, spec)
            report = spec.report_interval if spec.report_interval is not None else spec.collect_interval
            bound[spec.name] = BoundProperty(spec.name, prop_model, spec, visitor, float(spec.collect_interval),
                                             float(report))
        if len(self.problems) > before or protocol_config is None:
            return None
        return BoundDevice(device, protocol_config, bound)

    def resolve_model(self, source: Source, device: Device, config: Config
                      ) -> tuple[DeviceModel | None, dict[str, dict[str, Any]]]:
        if device.profile is not None:
            if device.model is not None:
                self.fail(source, "$.model", "give either model or profile, not both")
                return None, {}
            try:
                from gateway.resources.profiles import load_profile
            except ImportError:
                self.fail(source, "$.profile", "firmware profiles are not available in this installation")
                return None, {}
            try:
                profile = load_profile(device.profile)
            except ConfigError as exc:
                self.fail(source, "$.profile", str(exc))
                return None, {}
            return profile.model, profile.visitors
        if device.model is None:
            self.fail(source, "$.model", "a device needs a model (or a profile)")
            return None, {}
        model = config.models.get((device.namespace, device.model))
        if model is None:
            self.fail(source, "$.model", f"no DeviceModel {device.namespace}/{device.model}")
        return model, {}

    def check_intervals(self, source: Source, path: str, spec: DeviceProperty) -> None:
        if spec.collect_interval < MIN_INTERVAL:
            self.fail(source, f"{path}.collect_interval", f"must be at least {MIN_INTERVAL * 1000:g}ms")
        if spec.report_interval is not None and spec.report_interval < spec.collect_interval:
            self.fail(source, f"{path}.report_interval", "must not be shorter than collect_interval")

    def check_desired(self, source: Source, path: str, model: PropertyModel, spec: DeviceProperty) -> None:
        if model.access != "ReadWrite":
            self.fail(source, f"{path}.desired", f"{spec.name!r} is {model.access}: only ReadWrite properties "
                      "take a desired value")
            return
        try:
            coerce(model, spec.desired)
        except ValueRejected as exc:
            self.fail(source, f"{path}.desired", str(exc))
