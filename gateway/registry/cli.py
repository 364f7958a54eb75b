"""`fieldgate registry …` (serve, join-token, apply, nodes) and `fieldgate join`, registered as a built-in plugin."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import msgspec

from gateway.commands import Command
from gateway.errors import ConfigError, ResourceError
from gateway.hookspecs import hookimpl
from gateway.resources.durations import Duration
from gateway.resources.loader import format_validation_error, read_path
from gateway.resources.schema import AnyDocument, Device, DeviceModel, dec_hook, enc_hook

DEFAULT_REGISTRY_DIR = "./fieldgate-registry"


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path(DEFAULT_REGISTRY_DIR),
                        help=f"where the registry keeps its CA and database (default {DEFAULT_REGISTRY_DIR})")
    parser.add_argument("--db", default=os.environ.get("FIELDGATE_REGISTRY_DB") or None, metavar="URL",
                        help="postgresql://… to keep the tables in PostgreSQL, shared by registry replicas "
                             "(default: SQLite in the data dir; env FIELDGATE_REGISTRY_DB)")


def _duration(text: str) -> float:
    try:
        return float(Duration.parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise argparse.ArgumentTypeError(f"expected k=v,… got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def _configure_registry(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="run the registry over TLS (makes its CA on first start)")
    serve.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT (default 0.0.0.0:8443)")
    serve.add_argument("--heartbeat-interval", type=_duration, default=10.0,
                       help="the heartbeat interval given to nodes that join (default 10s)")
    _data_dir(serve)

    token = sub.add_parser("join-token", help="create or revoke join tokens")
    token_sub = token.add_subparsers(dest="token_action", required=True)
    create = token_sub.add_parser("create", help="print a new join token (it carries the CA's fingerprint)")
    create.add_argument("--ttl", type=_duration, default=86400.0, help="how long it is valid (default 24h)")
    create.add_argument("--max-uses", type=int, default=1, help="how many nodes may join with it (default 1)")
    create.add_argument("--labels", type=_labels, default={}, help="k=v,… given to the nodes that join with it")
    _data_dir(create)
    revoke = token_sub.add_parser("revoke", help="revoke a join token by its id (the part before the first dot)")
    revoke.add_argument("id")
    _data_dir(revoke)

    apply = sub.add_parser("apply", help="store resource documents; a Device with `node:` goes to that node")
    apply.add_argument("-f", "--file", required=True, type=Path, help="a YAML file or a directory of them")
    _data_dir(apply)

    api_token = sub.add_parser("token", help="create bearer tokens for the registry API")
    api_token_sub = api_token.add_subparsers(dest="api_token_action", required=True)
    api_create = api_token_sub.add_parser("create", help="print a new API token (only its hash is kept)")
    api_create.add_argument("--role", required=True, choices=("admin", "operator", "viewer"))
    _data_dir(api_create)

    group = sub.add_parser("group", help="node groups: create, list")
    group_sub = group.add_subparsers(dest="group_action", required=True)
    group_create = group_sub.add_parser("create", help="make a group of nodes (a node is in at most one group)")
    group_create.add_argument("name")
    group_create.add_argument("--nodes", type=lambda text: [n for n in text.split(",") if n.strip()], default=[],
                              help="a,b,… node names")
    group_create.add_argument("--selector", type=_labels, default={},
                              help="k=v,… nodes whose join-token labels match, now and when they join")
    _data_dir(group_create)
    group_list = group_sub.add_parser("list", help="list groups with their members")
    group_list.add_argument("--json", action="store_true", help="one JSON object per group")
    _data_dir(group_list)

    nodes = sub.add_parser("nodes", help="list nodes (`nodes remove NAME` forgets one and revokes its certificate)")
    nodes.add_argument("nodes_action", nargs="?", choices=("list", "remove"), default="list")
    nodes.add_argument("name", nargs="?")
    nodes.add_argument("--json", action="store_true", help="one JSON object per node")
    _data_dir(nodes)


def _registry(args: argparse.Namespace) -> int:
    from gateway.registry.ca import CertificateAuthority
    from gateway.registry.store import RegistryStore

    if args.action == "serve":
        from gateway.cli import setup_logging
        from gateway.registry.server import serve

        setup_logging("human")
        return asyncio.run(serve(args.listen, args.data_dir, interval=args.heartbeat_interval, db_url=args.db))

    async def with_store() -> int:
        async with RegistryStore(args.data_dir, args.db) as store:
            if args.action == "join-token" and args.token_action == "create":
                if args.max_uses < 1:
                    raise ConfigError("--max-uses: expected 1 or more")
                fingerprint = CertificateAuthority.load_or_create(args.data_dir).fingerprint
                token_id, secret = await store.create_token(args.ttl, args.max_uses, args.labels)
                print(f"{token_id}.{secret}.{fingerprint}")
            elif args.action == "join-token":
                await store.revoke_token(args.id)
                print(f"join token {args.id} revoked")
            elif args.action == "token":
                print(await store.create_api_token(args.role))
            elif args.action == "group" and args.group_action == "create":
                if not args.nodes and not args.selector:
                    raise ConfigError("group create: expected --nodes or --selector")
                members = await store.create_group(args.name, args.nodes, args.selector)
                print(f"group {args.name}: {', '.join(members) or 'no nodes yet'}")
            elif args.action == "group":
                _print_groups(await store.groups(), as_json=args.json)
            elif args.action == "apply":
                for line in await _apply(store, args.file):
                    print(line)
            elif args.nodes_action == "remove":
                if not args.name:
                    raise ConfigError("nodes remove: expected a node name")
                await store.remove_node(args.name)
                print(f"node {args.name} removed; its certificate is revoked")
            else:
                _print_nodes(await store.nodes(), as_json=args.json)
        return 0

    return asyncio.run(with_store())


async def _apply(store: Any, path: Path) -> list[str]:
    documents, problems = [], []
    for source, raw in read_path(path):
        try:
            doc = msgspec.convert(raw, AnyDocument, dec_hook=dec_hook)
        except msgspec.ValidationError as exc:
            problems.append(f"{source.prefix()}: {format_validation_error(exc, raw)}")
            continue
        if not isinstance(doc, Device | DeviceModel):
            problems.append(f"{source.prefix()}: the registry keeps Device and DeviceModel documents (for now)")
            continue
        node = doc.node if isinstance(doc, Device) else None
        documents.append((doc.kind, doc.namespace, doc.name, node, msgspec.json.encode(doc, enc_hook=enc_hook)))
    if problems:
        raise ResourceError(problems)
    await store.put_documents(documents)
    return [f"{kind} {ns}/{name}" + (f" → node {node}" if node else "") for kind, ns, name, node, _ in documents]


def _print_nodes(nodes: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        for node in nodes:
            print(json.dumps(node))
        return
    if not nodes:
        print("no nodes")
        return
    for node in nodes:
        last = node["last_heartbeat"]
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)) if last else "-"
        print(f"{node['name']:<24} {node['status']:<8} {node['version'] or '-':<10} {when}  {node['reason']}")


def _print_groups(groups: list[dict[str, Any]], *, as_json: bool) -> None:
    for group in groups:
        if as_json:
            print(json.dumps(group))
        else:
            selector = ",".join(f"{k}={v}" for k, v in group["selector"].items()) or "-"
            print(f"{group['name']:<24} {selector:<24} {','.join(group['nodes']) or '-'}")
    if not groups and not as_json:
        print("no groups")


def _configure_join(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", required=True, help="https://HOST:PORT of the registry")
    parser.add_argument("--token", required=True, help="a token from `fieldgate registry join-token create`")
    parser.add_argument("--name", default=None, help="the node name to ask for (default: the registry picks)")
    parser.add_argument("--data-dir", type=Path, default=Path("./fieldgate-data"),
                        help="the gateway's data dir (default ./fieldgate-data)")


def _join(args: argparse.Namespace) -> int:
    from gateway.registry.join import join

    settings = asyncio.run(join(args.registry, args.token, args.data_dir, name=args.name))
    print(f"joined {settings.url} as node {settings.node}")
    return 0


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("registry", "the thin cloud registry: serve, join-token, token, group, apply, nodes",
                _configure_registry, _registry),
        Command("join", "join this gateway to a registry with a join token", _configure_join, _join),
    ]
