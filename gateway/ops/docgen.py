"""Generates docs/resources.md and docs/rest-api.md from the schemas and the app: `python -m gateway.ops.docgen`.
The registry documents its own API (gateway.registry.docs).

tests/test_docs.py fails when the committed files differ from what this prints.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import msgspec
import msgspec.inspect as mi

from gateway.resources.durations import Duration, format_duration
from gateway.resources.schema import KINDS, ByteSize

DOCS = Path(__file__).resolve().parents[2] / "docs"


def type_name(info: mi.Type) -> str:
    if isinstance(info, mi.Metadata):
        return type_name(info.type)
    if isinstance(info, mi.UnionType):
        return " \\| ".join(type_name(t) for t in info.types)
    if isinstance(info, mi.StructType):
        return f"[{info.cls.__name__}](#{info.cls.__name__.lower()})"
    if isinstance(info, mi.ListType):
        return f"list of {type_name(info.item_type)}"
    if isinstance(info, mi.DictType):
        return f"map {type_name(info.key_type)} → {type_name(info.value_type)}"
    if isinstance(info, mi.LiteralType):
        return " \\| ".join(f"`{v}`" for v in info.values)
    if isinstance(info, mi.CustomType):
        return "duration (`250ms`, `1s`, `5m` or seconds)" if info.cls.__name__ == "Duration" else info.cls.__name__
    simple = {mi.StrType: "string", mi.IntType: "integer", mi.FloatType: "number", mi.BoolType: "boolean",
              mi.NoneType: "null", mi.AnyType: "any"}
    name = simple.get(type(info), type(info).__name__)
    constraints = []
    for attr, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "min length"),
                       ("max_length", "max length")):
        value = getattr(info, attr, None)
        if value is not None:
            constraints.append(f"{sign} {value}")
    if getattr(info, "pattern", None):
        constraints.append("name rule")
    return f"{name} ({', '.join(constraints)})" if constraints else name


def default_text(field: mi.Field) -> str:
    if field.required:
        return "**required**"
    if field.default is not msgspec.NODEFAULT:
        value = field.default
        if isinstance(value, Duration):
            return f"`{format_duration(value)}`"
        if isinstance(value, ByteSize):
            unit = next((u for u, shift in (("Gi", 30), ("Mi", 20), ("Ki", 10)) if value and value % (1 << shift) == 0),
                        "")
            return f"`{value >> {'Gi': 30, 'Mi': 20, 'Ki': 10, '': 0}[unit]}{unit}`"
        return f"`{msgspec.json.encode(value).decode()}`"
    if field.default_factory in (dict, list):
        return f"`{msgspec.json.encode(field.default_factory()).decode()}`"
    return "(defaults)"


def struct_section(cls: type[msgspec.Struct], seen: set[type[Any]], out: list[str], heading: str) -> None:
    if cls in seen:
        return
    seen.add(cls)
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    out += [f"{heading} {cls.__name__}", ""]
    config = cls.__struct_config__
    if config.tag_field and config.tag:
        out += [f"Selected by `{config.tag_field}: {config.tag}`.", ""]
    if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
        out += [cls.__doc__.strip().splitlines()[0], ""]
    out += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
    nested: list[type[msgspec.Struct]] = []
    for field in info.fields:
        description = ""
        if isinstance(field.type, mi.Metadata):
            description = (field.type.extra_json_schema or {}).get("description", "")
        if field.name == "kind" and getattr(cls.__struct_config__, "tag", None):
            continue
        out.append(f"| `{field.encode_name}` | {type_name(field.type)} | {default_text(field)} | {description} |")
        for struct in _structs_in(field.type):
            nested.append(struct)
    out.append("")
    for struct in nested:
        struct_section(struct, seen, out, "###")


def _structs_in(info: mi.Type) -> list[type[msgspec.Struct]]:
    if isinstance(info, mi.StructType):
        return [info.cls]
    if isinstance(info, mi.Metadata):
        return _structs_in(info.type)
    found: list[type[msgspec.Struct]] = []
    for attr in ("types", "item_type", "value_type"):
        inner = getattr(info, attr, None)
        if isinstance(inner, tuple):
            for item in inner:
                found += _structs_in(item)
        elif inner is not None:
            found += _structs_in(inner)
    return found


def resources_markdown() -> str:
    out = ["# Resource reference", "",
           "Generated from the schemas in `gateway/resources/schema.py` by `python -m gateway.ops.docgen`; do not "
           "edit.",
           "",
           "Every document has `kind` and `name`, optional `namespace` (default `default`), `labels` and "
           "`description`. Unknown fields are rejected. Names: lowercase letters, digits, `-` and `.`, starting "
           "and ending alphanumeric, no two symbols in a row, at most 253 characters.", ""]
    seen: set[type[Any]] = set()
    for kind, cls in KINDS.items():
        out += [f"## kind: {kind}", ""]
        seen.discard(cls)
        struct_section(cls, seen, out, "###")
    out += endpoint_type_sections()
    out += protocol_sections()
    return "\n".join(out).rstrip() + "\n"


def endpoint_type_sections() -> list[str]:
    from gateway.plugins import get_plugin_manager
    from gateway.sinks.registry import endpoint_registry

    out = ["## Endpoint types", "",
           "The `type` of an Endpoint and the `properties` it takes, checked at load; those of the built-in and "
           "first-party plugins (`fieldgate plugins` lists what an installation has). A number may be given as a "
           "string (`qos: \"1\"`). Route sources are the core's; route targets are sinks (`register_sinks`).", ""]
    seen: set[type[Any]] = set()
    for name, endpoint_type in sorted(endpoint_registry(get_plugin_manager()).items()):
        if not endpoint_type.provider.startswith(("gateway", "fieldgate_")):
            continue
        roles = []
        if endpoint_type.source_resource is not None:
            roles.append(f"a route source (`source_resource.{endpoint_type.source_resource}`)")
        if endpoint_type.target_resource is not None:
            key = endpoint_type.target_resource
            optional = ", optional" if endpoint_type.target_resource_optional else ""
            roles.append(f"a route target (`target_resource.{key}`{optional})" if key else "a route target")
        what = ("It is " + " and ".join(roles)) if roles else "Its plugin serves it; it is not part of routes"
        description = endpoint_type.description[:1].upper() + endpoint_type.description[1:]
        out += [f"### endpoint type: {name}", "", f"{description}. {what}.", ""]
        if endpoint_type.older_form:
            older = (f"Also read from the older form: an Endpoint of another type with `properties.plugin: {name}`"
                     + (f", which implies a Route from the bus topic in its `topic` property (default "
                        f"`{endpoint_type.older_form_topic}`) with the outbox `{name}:<namespace>/<name>`"
                        if endpoint_type.is_target else "") + ".")
            out += [older, ""]
        if not endpoint_type.properties.__struct_fields__:
            out += ["No properties.", ""]
            continue
        struct_section(endpoint_type.properties, seen, out, "####")
    return out


def protocol_sections() -> list[str]:
    from gateway.plugins import get_plugin_manager
    from gateway.protocols.registry import protocol_registry

    out = ["## Protocols", "",
           "The protocols of the built-in plugins (`fieldgate plugins` lists what an installation has).", ""]
    pm = get_plugin_manager()
    seen: set[type[Any]] = set()
    for name, cls in sorted(protocol_registry(pm).items()):
        if not cls.__module__.startswith(("gateway.", "fieldgate_")):
            continue
        out += [f"### protocol: {name}", "", *(cls.__doc__ or "").strip().splitlines()[:1], ""]
        struct_section(cls.config_type, seen, out, "####")
        visitor = cls.visitor_type
        for struct in _structs_in(mi.type_info(visitor)):
            struct_section(struct, seen, out, "####")
    return out


def rest_api_markdown() -> str:
    from gateway.web.routes_doc import route_table

    out = ["# REST API", "",
           "Generated from the app by `python -m gateway.ops.docgen`; do not edit. The live OpenAPI document is at "
           "`/schema/openapi.json` (also at `/schema`; it needs credentials like the API, and no documentation UI "
           "that would load scripts from a CDN is served). Every route but `/healthz` needs "
           "`Authorization: Bearer <token>` (`fieldgate token create --role R`) or the session cookie of a "
           "logged-in user (whose changes also need the CSRF token); no credentials give 401, a role too low "
           "gives 403. An error answers `{\"status_code\": 404, \"detail\": \"what was wrong\", \"request_id\": "
           "\"…\"}` (the `ErrorBody` of the OpenAPI document; the registry answers the same way). Every answer carries "
           "an `X-Request-ID` header; for a 500 the gateway's log names that id beside the traceback.", "",
           "| method | path | role | summary |", "| --- | --- | --- | --- |"]
    for method, path, role, summary in route_table():
        out.append(f"| {method} | `{path}` | {role} | {summary} |")
    out += ["", "## Pages of the local UI", "",
            "Server-rendered; they take the session cookie of `/login` (or a bearer token). An anonymous request "
            "is redirected (303) to `/login`; a form needs the session's CSRF token (`_csrf` field or "
            "`X-CSRF-Token` header). Static assets under `/static/` are public.", "",
            "| method | path | role | summary |", "| --- | --- | --- | --- |"]
    for method, path, role, summary in route_table(pages=True):
        out.append(f"| {method} | `{path}` | {role} | {summary} |")
    out += ["", "The registry's API and pages are in [registry-api.md](registry-api.md) (`python -m "
            "gateway.registry.docs`)."]
    return "\n".join(out) + "\n"


GENERATED = {"resources.md": resources_markdown, "rest-api.md": rest_api_markdown}


def main(argv: list[str]) -> int:
    for name, generate in GENERATED.items():
        (DOCS / name).write_text(generate(), encoding="utf-8")
        print(f"wrote docs/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
