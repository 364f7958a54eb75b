"""The walk of `fieldgate browse opcua`: the variables of a server's address space as a DeviceModel and a Device."""

from __future__ import annotations

import argparse
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import yaml
from asyncua import Client, ua
from asyncua.common.ua_utils import data_type_to_variant_type

from fieldgate_opcua.session import TRUE, Session, standard_node, status_code, status_name
from gateway.errors import ProtocolError
from gateway.protocols.base import BoundDevice
from gateway.resources.durations import format_duration
from gateway.resources.schema import Device, ProtocolRef

BROWSE_CHUNK = 100  # nodes per Browse request
ATTRIBUTE_CHUNK = 100  # variables per Read request (four attributes each)
MAX_CONTINUATIONS = 1000  # BrowseNext rounds for one node, against a server that never says it is done
_MODEL_TYPES = {
    ua.VariantType.Boolean: "boolean", ua.VariantType.SByte: "int", ua.VariantType.Byte: "int",
    ua.VariantType.Int16: "int", ua.VariantType.UInt16: "int", ua.VariantType.Int32: "int",
    ua.VariantType.UInt32: "int", ua.VariantType.Int64: "int", ua.VariantType.UInt64: "int",
    ua.VariantType.Float: "float", ua.VariantType.Double: "double", ua.VariantType.String: "string",
    ua.VariantType.DateTime: "string", ua.VariantType.Guid: "string", ua.VariantType.ByteString: "bytes",
    ua.VariantType.NodeId: "string", ua.VariantType.ExpandedNodeId: "string", ua.VariantType.StatusCode: "string",
    ua.VariantType.QualifiedName: "string", ua.VariantType.LocalizedText: "string",
}
# Abstract numeric data types (Number, Integer, UInteger): any value of them fits these model types.
_ABSTRACT_TYPES = {26: "double", 27: "int", 28: "int"}
_WRITE_TYPES = frozenset({"Boolean", "SByte", "Byte", "Int16", "UInt16", "Int32", "UInt32", "Int64", "UInt64",
                          "Float", "Double", "String", "ByteString"})
_SERVER_OBJECT = standard_node(ua.ObjectIds.Server)


@dataclass
class Variable:
    node_id: ua.NodeId
    path: tuple[tuple[int, str], ...]

    @property
    def names(self) -> str:
        return "/".join(name for _, name in self.path)


@dataclass
class Found:
    """What a walk found: the documents, and why variables were left out."""

    documents: list[dict[str, Any]] = field(default_factory=list)
    written: int = 0
    visited: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    truncated: bool = False

    def summary(self) -> str:
        text = f"{self.written} variables written ({self.visited} nodes visited)"
        if self.skipped:
            text += "; left out: " + ", ".join(f"{count} {why}" for why, count in self.skipped.most_common())
        if self.truncated:
            text += "; stopped at --max-nodes or --max-depth, raise them to see more"
        return text


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """A glob over a path of names: `*` and `?` stay within one name, `**` crosses `/`."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out), re.DOTALL)


async def walk(config: Any, raw: dict[str, Any], args: argparse.Namespace, interval: float) -> Found:
    """Connect as a device would, walk from the Objects folder and describe the variables the patterns choose."""
    device = BoundDevice(Device(name="browse", protocol=ProtocolRef(name="opcua", config=raw)), config, {})
    session = Session(device, args.data_dir)
    await session.open()
    try:
        client = session.client
        found = Found()
        patterns = [pattern_regex(p) for p in args.path_pattern]
        with_server = any(p.startswith("Server") for p in args.path_pattern)
        variables = await _walk(client, found, max_depth=args.max_depth, max_nodes=args.max_nodes,
                                with_server=with_server)
        chosen = [v for v in variables if not patterns or any(p.fullmatch(v.names) for p in patterns)]
        if len(chosen) < len(variables):
            found.skipped["not matching a pattern"] += len(variables) - len(chosen)
        properties = await _describe(client, chosen, found)
        application = await _application_name(client)
    except ProtocolError:
        raise
    except Exception as exc:
        from fieldgate_opcua.session import translate

        raise translate(exc, f"browsing {config.endpoint} failed") from exc
    finally:
        await session.close()
    name = args.name or _slug(application) or "opcua-device"
    found.documents = _documents(name, args.model or name, args.namespace, raw, properties, args, interval,
                                 f"OPC UA variables of {application or config.endpoint}")
    found.written = len(properties)
    return found


async def _walk(client: Client, found: Found, *, max_depth: int, max_nodes: int,
                with_server: bool) -> list[Variable]:
    """Breadth first through Objects and their variables' parents; a variable's own children are not entered."""
    objects = standard_node(ua.ObjectIds.ObjectsFolder)
    queue: list[tuple[ua.NodeId, tuple[tuple[int, str], ...]]] = [(objects, ())]
    seen = {objects}
    variables: list[Variable] = []
    while queue:
        batch, queue = queue[:BROWSE_CHUNK], queue[BROWSE_CHUNK:]
        params = ua.BrowseParameters(RequestedMaxReferencesPerNode=1000, NodesToBrowse=[ua.BrowseDescription(
            NodeId=node, BrowseDirection=ua.BrowseDirection.Forward,
            ReferenceTypeId=standard_node(ua.ObjectIds.HierarchicalReferences), IncludeSubtypes=TRUE,
            NodeClassMask=ua.NodeClass.Object | ua.NodeClass.Variable, ResultMask=ua.BrowseResultMask.All)
            for node, _ in batch])
        results = await client.uaclient.browse(params)
        for (_, path), result in zip(batch, results, strict=False):
            for ref in await _references(client, result):
                target = ref.NodeId
                if getattr(target, "ServerIndex", None) or getattr(target, "NamespaceUri", None):
                    continue  # a node on another server, or not in this server's namespace table
                node_id = ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType)
                if node_id in seen or (node_id == _SERVER_OBJECT and not with_server):
                    continue
                seen.add(node_id)
                found.visited += 1
                if found.visited > max_nodes:
                    found.truncated = True
                    return variables
                child = (*path, (ref.BrowseName.NamespaceIndex, ref.BrowseName.Name or ""))
                if ref.NodeClass == ua.NodeClass.Variable:
                    variables.append(Variable(node_id, child))
                elif len(child) < max_depth:
                    queue.append((node_id, child))
                else:
                    found.truncated = True
    return variables


async def _references(client: Client, result: ua.BrowseResult) -> list[ua.ReferenceDescription]:
    references = list(result.References or [])
    point = result.ContinuationPoint
    rounds = 0
    while point and rounds < MAX_CONTINUATIONS:
        rounds += 1
        more = await client.uaclient.browse_next(ua.BrowseNextParameters(ContinuationPoints=[point]))
        if not more:
            break
        references.extend(more[0].References or [])
        point = more[0].ContinuationPoint
    return references


@dataclass
class Described:
    name: str
    variable: Variable
    model_type: str
    writable: bool
    data_type: str | None


async def _describe(client: Client, variables: list[Variable], found: Found) -> list[Described]:
    """Each chosen variable's data type, rank and access; those the twin cannot hold are left out and counted."""
    attributes = (ua.AttributeIds.DataType, ua.AttributeIds.ValueRank, ua.AttributeIds.UserAccessLevel)
    types: dict[ua.NodeId, tuple[str | None, ua.VariantType | None]] = {}
    described: list[Described] = []
    names: set[str] = set()
    for start in range(0, len(variables), ATTRIBUTE_CHUNK):
        chunk = variables[start:start + ATTRIBUTE_CHUNK]
        params = ua.ReadParameters(TimestampsToReturn=ua.TimestampsToReturn.Neither, NodesToRead=[
            ua.ReadValueId(NodeId=v.node_id, AttributeId=attribute) for v in chunk for attribute in attributes])
        values = await client.uaclient.read(params)
        for index, variable in enumerate(chunk):
            data_type, rank, access = values[index * 3:index * 3 + 3]
            bad = [code for code in map(status_code, (data_type, rank, access)) if code & 0x80000000]
            if bad:
                found.skipped[f"unreadable ({status_name(bad[0])})"] += 1
                continue
            rank_value = rank.Value.Value if rank.Value is not None else -1
            if isinstance(rank_value, int) and rank_value >= 0:
                found.skipped["arrays"] += 1
                continue
            level = access.Value.Value if access.Value is not None else 0
            if not isinstance(level, int) or not level & 0x01:
                found.skipped["not readable by this user"] += 1
                continue
            type_id = data_type.Value.Value if data_type.Value is not None else None
            if not isinstance(type_id, ua.NodeId):
                found.skipped["without a data type"] += 1
                continue
            if type_id not in types:
                types[type_id] = await _model_type(client, type_id)
            model_type, variant_type = types[type_id]
            if model_type is None:
                found.skipped["of structured or unknown types"] += 1
                continue
            name = _unique(_property_name(variable), names)
            write_type = variant_type.name if variant_type is not None and variant_type.name in _WRITE_TYPES else None
            described.append(Described(name, variable, model_type, bool(level & 0x02), write_type))
    return described


async def _model_type(client: Client, type_id: ua.NodeId) -> tuple[str | None, ua.VariantType | None]:
    """The model type of a data type, and the built-in type values are written as (None if not one of those)."""
    if type_id.NamespaceIndex == 0 and isinstance(type_id.Identifier, int):
        if type_id.Identifier in _ABSTRACT_TYPES:
            return _ABSTRACT_TYPES[type_id.Identifier], None
        if 1 <= type_id.Identifier <= 25:
            variant_type = ua.VariantType(type_id.Identifier)
            return _MODEL_TYPES.get(variant_type), variant_type
    try:
        variant_type = await data_type_to_variant_type(client.get_node(type_id))
    except Exception:  # a type the server cannot trace to a built-in one
        return None, None
    return _MODEL_TYPES.get(variant_type), variant_type


def _property_name(variable: Variable) -> str:
    parts = [re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "_" for _, name in variable.path]
    name = ".".join(parts)
    if not re.match(r"[A-Za-z_]", name):
        name = f"_{name}"
    return name[:120]


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name[:115]}-{n}"
        n += 1
    taken.add(candidate)
    return candidate


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:63].strip("-")


async def _application_name(client: Client) -> str:
    try:
        endpoints = await client.get_endpoints()
    except Exception:
        return ""
    for endpoint in endpoints:
        text = endpoint.Server.ApplicationName.Text if endpoint.Server.ApplicationName else None
        if text:
            return str(text)
    return ""


def _browse_path(variable: Variable) -> str | None:
    if any("/" in name or not name for _, name in variable.path):
        return None  # a name with a slash cannot be written as a path: its NodeId is used instead
    return "/".join(f"{index}:{name}" for index, name in variable.path)


def _documents(name: str, model: str, namespace: str, raw: dict[str, Any], found: list[Described],
               args: argparse.Namespace, interval: float, description: str) -> list[dict[str, Any]]:
    meta: dict[str, Any] = {} if namespace == "default" else {"namespace": namespace}
    model_doc: dict[str, Any] = {"kind": "DeviceModel", "name": model, **meta, "description": description,
                                 "protocol": "opcua", "properties": []}
    device_doc: dict[str, Any] = {"kind": "Device", "name": name, **meta, "model": model,
                                  "protocol": {"name": "opcua", "config": raw}, "properties": []}
    for item in found:
        model_doc["properties"].append({"name": item.name, "type": item.model_type,
                                         "access": "ReadWrite" if item.writable else "ReadOnly"})
        path = _browse_path(item.variable) if args.visitor == "browse_path" else None
        visitor: dict[str, Any] = {"browse_path": path} if path else {"node_id": item.variable.node_id.to_string()}
        if args.mode == "poll":
            visitor["mode"] = "poll"
        if item.data_type is not None:
            visitor["data_type"] = item.data_type
        device_doc["properties"].append({"name": item.name, "collect_interval": format_duration(interval),
                                         "visitor": visitor})
    return [model_doc, device_doc]


def dump(documents: list[dict[str, Any]]) -> str:
    return str(yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, allow_unicode=True))
