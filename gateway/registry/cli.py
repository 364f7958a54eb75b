"""`fieldgate registry …` (serve, join-token, apply, nodes, …), registered as a built-in plugin (a node joins with
`fieldgate join`, gateway.uplink.cli)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, NotFound
from gateway.resources.durations import Duration
from gateway.resources.loader import read_path

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


def _size(text: str) -> int:
    from gateway.resources.schema import ByteSize

    try:
        return int(ByteSize.parse(int(text) if text.isdigit() else text))
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


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    serve = sub.add_parser("serve", help="run the registry over TLS (makes its CA on first start)")
    serve.add_argument("--listen", default="0.0.0.0:8443", help="HOST:PORT (default 0.0.0.0:8443)")
    serve.add_argument("--channel-listen", default="", metavar="HOST:PORT|off",
                       help="a listener of its own for the nodes' channel (WebSocket, mutual TLS); default: the "
                            "--listen one at /api/v1/channel; off: nodes poll over HTTPS")
    serve.add_argument("--peer-listen", default="", metavar="HOST:PORT",
                       help="where this replica takes relayed service streams from the other registry replicas "
                            "(TLS with the registry CA's replica certificates), so nodes whose channels are at "
                            "different replicas reach each other through the relay; the replica refreshes its row "
                            "in the database every 2 s, and one not seen for 6 s counts as gone; default: off")
    serve.add_argument("--peer-advertise", default="", metavar="HOST:PORT",
                       help="the address the other replicas reach --peer-listen at (default: the --peer-listen one)")
    serve.add_argument("--consensus-certificate-lifetime", type=_duration, default=90 * 86400.0, metavar="DURATION",
                       help="how long the etcd certificates of groups with offline failover last; members get new "
                            "ones every two thirds of it (default 90d)")
    serve.add_argument("--heartbeat-interval", type=_duration, default=10.0,
                       help="the heartbeat interval given to nodes that join (default 10s)")
    serve.add_argument("--files", default=os.environ.get("FIELDGATE_REGISTRY_FILES") or None, metavar="DIR|S3URL",
                       help="where file bytes go: a directory (replicas share it) or s3://bucket/prefix, with "
                            "FIELDGATE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION (default: "
                            "files/ in the data dir; env FIELDGATE_REGISTRY_FILES)")
    serve.add_argument("--files-max-age", type=_duration, default=30 * 86400.0,
                       help="edge → cloud files older than this are deleted (default 30d)")
    serve.add_argument("--files-max-bytes", type=_size, default=10 << 30,
                       help="edge → cloud files beyond this total size are deleted, oldest first (default 10Gi)")
    _data_dir(serve)

    token = sub.add_parser("join-token", help="create or revoke join tokens")
    token_sub = token.add_subparsers(dest="token_action", required=True)
    create = token_sub.add_parser("create", help="print a new join token (it carries the CA's fingerprint)")
    create.add_argument("--ttl", type=_duration, default=86400.0, help="how long it is valid (default 24h)")
    create.add_argument("--max-uses", type=int, default=1, help="how many nodes may join with it (default 1)")
    create.add_argument("--labels", type=_labels, default={}, help="k=v,… given to the nodes that join with it")
    create.add_argument("--workspace", default="default", help="the workspace the nodes join (default default)")
    create.add_argument("--prefix", default="", help="nodes that join without --name are named <prefix>-<6 hex "
                                                     "digits> (default node)")
    _data_dir(create)
    revoke = token_sub.add_parser("revoke", help="revoke a join token by its id (the part before the first dot)")
    revoke.add_argument("id")
    _data_dir(revoke)

    apply = sub.add_parser("apply", help="store resource documents; a Device or a Workload with `node:` goes to "
                                         "that node, a BatchWorkload to the nodes of its groups")
    apply.add_argument("-f", "--file", required=True, type=Path, help="a YAML file or a directory of them")
    apply.add_argument("--workspace", default="default", help="the workspace of the documents (default default)")
    _data_dir(apply)

    api_token = sub.add_parser("token", help="bearer tokens for the registry API: create, list, revoke")
    api_token_sub = api_token.add_subparsers(dest="api_token_action", required=True)
    api_create = api_token_sub.add_parser("create", help="print a new API token (only its hash is kept)")
    api_create.add_argument("--role", default="viewer",
                            help="viewer (the default, the lowest), operator, admin or a custom role")
    api_create.add_argument("--scope", default="workspace:default",
                            help="platform, folder:F or workspace:W (default workspace:default, the narrowest)")
    api_create.add_argument("--description", default="", help="what the token is for")
    _data_dir(api_create)
    api_list = api_token_sub.add_parser("list", help="list API tokens (without secrets)")
    api_list.add_argument("--json", action="store_true", help="one JSON object per token")
    _data_dir(api_list)
    api_revoke = api_token_sub.add_parser("revoke", help="revoke an API token by its id (the part before the dot)")
    api_revoke.add_argument("id")
    _data_dir(api_revoke)
    _configure_access(sub)
    _configure_batches_and_twins(sub)
    _configure_upgrades(sub)
    from gateway.registry.files_cli import configure_files

    configure_files(sub, _data_dir, _duration)

    group = sub.add_parser("group", help="node groups: create, list")
    group_sub = group.add_subparsers(dest="group_action", required=True)
    group_create = group_sub.add_parser("create", help="make a group of nodes (a node is in at most one group)")
    group_create.add_argument("name")
    group_create.add_argument("--nodes", type=lambda text: [n for n in text.split(",") if n.strip()], default=[],
                              help="a,b,… node names")
    group_create.add_argument("--selector", type=_labels, default={},
                              help="k=v,… nodes whose join-token labels match, now and when they join")
    group_create.add_argument("--workspace", default="default", help="the group's workspace (default default)")
    _data_dir(group_create)
    group_delete = group_sub.add_parser("delete", help="delete a group (its nodes stay, in no group)")
    group_delete.add_argument("name")
    _data_dir(group_delete)
    group_list = group_sub.add_parser("list", help="list groups with their members")
    group_list.add_argument("--json", action="store_true", help="one JSON object per group")
    _data_dir(group_list)

    nodes = sub.add_parser("nodes", help="list nodes (`nodes remove NAME` forgets one and revokes its certificate; "
                                         "`nodes pause|resume NAME` stops or resumes placing new workloads there)")
    nodes.add_argument("nodes_action", nargs="?", choices=("list", "remove", "move", "pause", "resume"),
                       default="list")
    nodes.add_argument("name", nargs="?")
    nodes.add_argument("--workspace", default=None, help="`nodes move NAME --workspace W` moves a node and its "
                                                         "devices to another workspace")
    nodes.add_argument("--json", action="store_true", help="one JSON object per node")
    _data_dir(nodes)

    remove = sub.add_parser("delete", help="delete a document applied at the registry; its nodes drop it")
    remove.add_argument("kind", choices=("DeviceModel", "Device", "Workload", "ConfigItem", "Secret",
                                         "BatchWorkload", "Endpoint", "Route", "Service"))
    remove.add_argument("document", metavar="[NS/]NAME")
    _data_dir(remove)

    workloads = sub.add_parser("workloads", help="workloads per node with the status their nodes report "
                                                 "(`workloads versions|rollback|events|logs|stop|start|restart "
                                                 "[NS/]NAME` for one)")
    workloads.add_argument("workloads_action", nargs="?", default="list",
                           choices=("list", "versions", "rollback", "events", "logs", "stop", "start", "restart"))
    workloads.add_argument("workload", nargs="?", metavar="[NS/]NAME",
                           help="a Workload (or with --kind BatchWorkload, a BatchWorkload) for versions and "
                                "rollback; the workload as its nodes run it for events, logs, stop, start and "
                                "restart")
    workloads.add_argument("--kind", choices=("Workload", "BatchWorkload"), default="Workload",
                           help="the kind of document whose versions to list or roll back (Workload)")
    workloads.add_argument("--version", type=int, help="`rollback`: the kept version to apply again")
    workloads.add_argument("--node", help="`logs`: the node to ask (`events`: only this node's; `stop`, `start`, "
                                          "`restart`: only this node, else every node it is placed on)")
    workloads.add_argument("--instance", help="`logs`: only this instance's lines")
    workloads.add_argument("--tail", type=int, default=100, help="`logs`: how many of the newest lines (100)")
    workloads.add_argument("--timeout", type=_duration, default=10.0,
                           help="`logs`, `stop`, `start`, `restart`: how long a node has to answer (10s)")
    workloads.add_argument("--registry", help="`logs`, `stop`, `start`, `restart`: https://HOST:PORT of the running "
                                              "registry (default: where `registry serve` last listened)")
    workloads.add_argument("--token", default=os.environ.get("FIELDGATE_REGISTRY_TOKEN") or None,
                           help="`logs`, `stop`, `start`, `restart`: an API token (default: env "
                                "FIELDGATE_REGISTRY_TOKEN, else one made for this call)")
    workloads.add_argument("--json", action="store_true", help="one JSON object per line")
    _data_dir(workloads)

    logs = sub.add_parser("logs", help="print a node's recent log, asked of the node now over its link")
    logs.add_argument("node")
    logs.add_argument("--level", choices=("debug", "info", "warning", "error", "critical"), help="minimum level")
    logs.add_argument("--device", help="a device id (ns/name), or a name in any namespace")
    for name, what in (("route", "a route (ns/name)"), ("sink", "a sink's outbox"), ("logger", "a logger prefix"),
                       ("contains", "text in the message, any case"),
                       ("since", "an ISO 8601 time, unix seconds or a duration ago such as 15m")):
        logs.add_argument(f"--{name}", help=what)
    logs.add_argument("--limit", type=int, help="at most this many lines, the newest (default 200)")
    logs.add_argument("--timeout", type=_duration, default=10.0, help="how long the node has to answer (10s)")
    logs.add_argument("--registry", help="https://HOST:PORT of the running registry (default: where "
                                         "`registry serve` last listened)")
    logs.add_argument("--token", default=os.environ.get("FIELDGATE_REGISTRY_TOKEN") or None,
                      help="an API token (default: env FIELDGATE_REGISTRY_TOKEN, else one made for this call)")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    _data_dir(logs)


def run(args: argparse.Namespace) -> int:
    from gateway.registry.ca import CertificateAuthority
    from gateway.registry.store import RegistryStore

    if args.action == "serve":
        from gateway.cli import setup_logging
        from gateway.registry.batch import record_urls
        from gateway.registry.consensus_ca import set_member_days
        from gateway.registry.server import serve

        setup_logging("human")
        try:
            set_member_days(args.consensus_certificate_lifetime / 86400)
        except ValueError as exc:
            print(f"fieldgate registry serve: --consensus-certificate-lifetime: {exc}", file=sys.stderr)
            return 2
        record_urls(args.data_dir, args.listen)  # for bundles made without --url
        from gateway.registry.files import Retention

        return asyncio.run(serve(args.listen, args.data_dir, interval=args.heartbeat_interval, db_url=args.db,
                                 files_url=args.files, channel_listen=args.channel_listen,
                                 peer_listen=args.peer_listen, peer_advertise=args.peer_advertise,
                                 retention=Retention(args.files_max_age, args.files_max_bytes)))
    if args.action == "files":
        from gateway.registry.files_cli import run_files_command

        return run_files_command(args)
    if args.action == "logs":
        from gateway.registry.logs import print_node_logs

        return print_node_logs(args)
    if args.action == "workloads" and args.workloads_action == "logs":
        from gateway.registry.logs import print_workload_logs

        return print_workload_logs(args, *_workload_name(args))
    if args.action == "workloads" and args.workloads_action in ("stop", "start", "restart"):
        from gateway.registry.lifecycle import print_workload_action

        return print_workload_action(args, *_workload_name(args))

    async def with_store() -> int:
        from gateway.registry import access

        cli = access.cli_caller()
        async with RegistryStore(args.data_dir, args.db) as store:
            if await _access_commands(store, args) or await _batch_and_twin_commands(store, args):
                pass
            elif args.action == "upgrade":
                from gateway.registry.upgrades import run_command

                await run_command(store, args)
            elif args.action == "join-token" and args.token_action == "create":
                if args.max_uses < 1:
                    raise ConfigError("--max-uses: expected 1 or more")
                fingerprint = CertificateAuthority.load_or_create(args.data_dir).fingerprint
                async with access.audited(store, cli, "join-token.create", "join-token",
                                          access.workspace_scope(args.workspace)) as entry:
                    await access.check_workspace(store, args.workspace)
                    access.check_name_prefix(args.prefix, "--prefix")
                    token_id, secret = await store.create_token(args.ttl, args.max_uses, args.labels,
                                                                args.workspace, args.prefix)
                    entry.detail = {"id": token_id, "labels": args.labels, "max_uses": args.max_uses,
                                    "prefix": args.prefix}
                print(f"{token_id}.{secret}.{fingerprint}")
            elif args.action == "join-token":
                scope = access.workspace_scope(await access.join_token_workspace(store, args.id))
                async with access.audited(store, cli, "join-token.revoke", f"join-token/{args.id}", scope):
                    await store.revoke_token(args.id)
                print(f"join token {args.id} revoked")
            elif args.action == "group" and args.group_action == "create":
                if not args.nodes and not args.selector:
                    raise ConfigError("group create: expected --nodes or --selector")
                async with access.audited(store, cli, "group.create", f"group/{args.name}",
                                          access.workspace_scope(args.workspace)) as entry:
                    entry.detail = {"nodes": args.nodes, "selector": args.selector}
                    await access.check_workspace(store, args.workspace)
                    members = await store.create_group(args.name, args.nodes, args.selector, args.workspace)
                print(f"group {args.name}: {', '.join(members) or 'no nodes yet'}")
            elif args.action == "group" and args.group_action == "delete":
                group_workspace = (await access.group_workspaces(store)).get(args.name)
                async with access.audited(store, cli, "group.delete", f"group/{args.name}",
                                          access.workspace_scope(group_workspace)):
                    await store.delete_group(args.name)
                print(f"group {args.name} deleted")
            elif args.action == "group":
                _print_groups(await store.groups(), as_json=args.json)
            elif args.action == "apply":
                for line in await _apply(store, args.file, args.workspace):
                    print(line)
            elif args.action == "delete":
                from gateway.registry.workloads import delete_document

                namespace, _, name = args.document.rpartition("/")
                await delete_document(store, cli, args.kind, namespace or "default", name)
                print(f"{args.kind} {namespace or 'default'}/{name} deleted")
            elif args.action == "workloads" and args.workloads_action != "list":
                from gateway.registry.history import run_command as workload_command

                await workload_command(store, args, *_workload_name(args))
            elif args.action == "workloads":
                from gateway.registry.workloads import workload_views

                _print_workloads(await workload_views(store), as_json=args.json)
            elif args.nodes_action in ("pause", "resume"):
                if not args.name:
                    raise ConfigError(f"nodes {args.nodes_action}: expected a node name")
                scope = access.workspace_scope(await access.node_workspace(store, args.name))
                async with access.audited(store, cli, f"node.{args.nodes_action}", f"node/{args.name}", scope):
                    await store.set_paused(args.name, args.nodes_action == "pause")
                print(f"node {args.name}: " + ("paused, no new workload instances" if args.nodes_action == "pause"
                                               else "takes new workload instances again"))
            elif args.nodes_action == "remove":
                if not args.name:
                    raise ConfigError("nodes remove: expected a node name")
                scope = access.workspace_scope(await access.node_workspace(store, args.name))
                async with access.audited(store, cli, "node.remove", f"node/{args.name}", scope):
                    await store.remove_node(args.name)
                print(f"node {args.name} removed; its certificate is revoked")
            elif args.nodes_action == "move":
                if not args.name or not args.workspace:
                    raise ConfigError("nodes move: expected a node name and --workspace W")
                async with access.audited(store, cli, "node.change", f"node/{args.name}",
                                          access.workspace_scope(args.workspace)) as entry:
                    entry.detail = {"workspace": args.workspace}
                    await access.check_workspace(store, args.workspace)
                    if await access.node_workspace(store, args.name) is None:
                        raise NotFound(f"no node {args.name}")
                    await store.move_node(args.name, args.workspace)
                print(f"node {args.name} moved to workspace {args.workspace}")
            else:
                _print_nodes(await store.nodes(), as_json=args.json)
        return 0

    return asyncio.run(with_store())


async def _apply(store: Any, path: Path, workspace: str = "default") -> list[str]:
    from gateway.registry import access
    from gateway.registry.workloads import apply_documents

    return await apply_documents(store, read_path(path), workspace, access.cli_caller(), str(path))


def _workload_name(args: argparse.Namespace) -> tuple[str, str]:
    if not args.workload:
        raise ConfigError(f"workloads {args.workloads_action}: expected a workload [NS/]NAME")
    namespace, _, name = args.workload.rpartition("/")
    return namespace or "default", name


def _why(view: dict[str, Any]) -> str:
    """Why a workload does not run where it should (pending, held back), else its last event."""
    if view["status"] in ("pending", "held-back", "not-placed") and view["reason"]:
        return str(view["reason"])
    return str(view["last_event"] or view["reason"])


def _print_workloads(views: list[dict[str, Any]], *, as_json: bool) -> None:
    for view in views:
        if as_json:
            print(json.dumps(view))
        else:
            print(f"{view['namespace']}/{view['name']:<28} {view['node'] or '-':<16} {view['status']:<12} "
                  f"{view['ready']}/{view['replicas'] if view['replicas'] is not None else '?'} ready  "
                  f"{view['restarts']} restarts  {_why(view)}")
    if not views and not as_json:
        print("no workloads")


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
        replica = f"  (channel at replica {node['replica']['peer']})" if node.get("replica") else ""
        print(f"{node['name']:<24} {node['status']:<8} {node['version'] or '-':<10} {when}  {node['reason']}{replica}")


def _print_groups(groups: list[dict[str, Any]], *, as_json: bool) -> None:
    for group in groups:
        if as_json:
            print(json.dumps(group))
        else:
            selector = ",".join(f"{k}={v}" for k, v in group["selector"].items()) or "-"
            print(f"{group['name']:<24} {selector:<24} {','.join(group['nodes']) or '-'}")
    if not groups and not as_json:
        print("no groups")


def _configure_access(sub: Any) -> None:
    user = sub.add_parser("user", help="registry users for the pages: add, list, remove")
    user_sub = user.add_subparsers(dest="user_action", required=True)
    user_add = user_sub.add_parser("add", help="add a user or change its role, scope and password")
    user_add.add_argument("name")
    user_add.add_argument("--role", default="viewer",
                          help="viewer (the default, the lowest), operator, admin or a custom role")
    user_add.add_argument("--scope", default="workspace:default",
                          help="platform, folder:F or workspace:W (default workspace:default, the narrowest)")
    given = user_add.add_mutually_exclusive_group()
    given.add_argument("--password-file", type=Path, default=None,
                       help="read the password from the first line of this file (default: ask for it)")
    given.add_argument("--password-stdin", action="store_true",
                       help="read the password from the first line of standard input")
    _data_dir(user_add)
    user_list = user_sub.add_parser("list", help="list registry users")
    user_list.add_argument("--json", action="store_true", help="one JSON object per user")
    _data_dir(user_list)
    user_remove = user_sub.add_parser("remove", help="remove a registry user")
    user_remove.add_argument("name")
    _data_dir(user_remove)

    workspace = sub.add_parser("workspace", help="workspaces (in folders) that nodes, groups and documents lie in")
    workspace_sub = workspace.add_subparsers(dest="workspace_action", required=True)
    workspace_create = workspace_sub.add_parser("create", help="create a workspace in a folder")
    workspace_create.add_argument("name")
    workspace_create.add_argument("--folder", default="default", help="its folder (default default)")
    _data_dir(workspace_create)
    workspace_list = workspace_sub.add_parser("list", help="list workspaces with their folders")
    _data_dir(workspace_list)

    role = sub.add_parser("role", help="roles as sets of permissions: list, create, delete custom roles")
    role_sub = role.add_subparsers(dest="role_action", required=True)
    role_list = role_sub.add_parser("list", help="built-in and custom roles with their permissions, least "
                                                 "privileged first")
    role_list.add_argument("--json", action="store_true", help="one JSON object per role")
    _data_dir(role_list)
    role_create = role_sub.add_parser("create", help="create a custom role")
    role_create.add_argument("name")
    role_create.add_argument("--permissions", required=True,
                             help="comma-separated permissions (`role list --json` shows each role's; the "
                                  "catalogue is in the README)")
    role_create.add_argument("--description", default="", help="what the role is for")
    _data_dir(role_create)
    role_delete = role_sub.add_parser("delete", help="delete a custom role nobody holds")
    role_delete.add_argument("name")
    _data_dir(role_delete)

    audit = sub.add_parser("audit", help="the newest entries of the audit log of every change, oldest of them first")
    audit.add_argument("--json", action="store_true", help="one JSON object per entry")
    audit.add_argument("--limit", type=int, default=100, help="how many entries (default 100)")
    _data_dir(audit)


def _read_stdin_password() -> str:
    line = sys.stdin.readline()
    if not line:
        raise ConfigError("--password-stdin: nothing on standard input")
    return line.rstrip("\r\n")


def _read_password(path: Path | None) -> str:
    import getpass

    if path is not None:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"--password-file {path}: {exc.strerror}") from None
        return lines[0] if lines else ""
    try:
        password = getpass.getpass("Password: ")
        again = getpass.getpass("Again: ")
    except EOFError:
        raise ConfigError("no password given: type it at the prompt or use --password-file") from None
    if again != password:
        raise ConfigError("the passwords differ")
    return password


async def _access_commands(store: Any, args: argparse.Namespace) -> bool:
    """token, user, workspace, role and audit; False when `args` is another command."""
    from gateway.registry import access, roles

    cli = access.cli_caller()
    if args.action == "token" and args.api_token_action == "create":
        async with access.audited(store, cli, "token.create", "token", args.scope) as entry:
            token = await access.create_api_token(store, args.role, await access.check_scope(store, args.scope),
                                                  args.description)
            entry.detail = {"id": token.split(".")[0], "role": args.role}
        print(token)
    elif args.action == "token" and args.api_token_action == "revoke":
        tokens = {t["id"]: t for t in await access.api_tokens(store)}
        async with access.audited(store, cli, "token.revoke", f"token/{args.id}",
                                  tokens.get(args.id, {}).get("scope", access.PLATFORM)):
            await access.revoke_api_token(store, args.id)
        print(f"API token {args.id} revoked")
    elif args.action == "token":
        for listed in await access.api_tokens(store):
            print(json.dumps(listed) if args.json else
                  f"{listed['id']:<10} {listed['role']:<9} {listed['scope']:<24} "
                  f"{'revoked' if listed['revoked_at'] else 'valid':<8} {listed['description']}")
    elif args.action == "user" and args.user_action == "add":
        password = _read_stdin_password() if args.password_stdin else _read_password(args.password_file)
        async with access.audited(store, cli, "user.add", f"user/{args.name}", args.scope) as entry:
            entry.detail = {"role": args.role}
            await access.add_user(store, args.name, args.role, await access.check_scope(store, args.scope), password)
        print(f"user {args.name}: {args.role} in {args.scope}")
    elif args.action == "user" and args.user_action == "remove":
        held = next((u["scope"] for u in await access.users(store) if u["name"] == args.name), access.PLATFORM)
        async with access.audited(store, cli, "user.remove", f"user/{args.name}", held):
            await access.remove_user(store, args.name)
        print(f"user {args.name} removed")
    elif args.action == "user":
        for user in await access.users(store):
            print(json.dumps(user) if args.json else f"{user['name']:<24} {user['role']:<9} {user['scope']}")
    elif args.action == "workspace" and args.workspace_action == "create":
        async with access.audited(store, cli, "workspace.create", f"workspace/{args.name}", f"folder:{args.folder}"):
            await access.create_workspace(store, args.name, args.folder)
        print(f"workspace {args.name} in folder {args.folder}")
    elif args.action == "workspace":
        for name, folder in (await access.workspaces(store)).items():
            print(f"{name:<24} folder {folder}")
    elif args.action == "role" and args.role_action == "create":
        permissions = [p.strip() for p in args.permissions.split(",") if p.strip()]
        made = await roles.create_role_as(store, cli, args.name, args.description, permissions)
        print(f"role {made.name}: {', '.join(made.listed())}")
    elif args.action == "role" and args.role_action == "delete":
        await roles.delete_role_as(store, cli, args.name)
        print(f"role {args.name} deleted")
    elif args.action == "role":
        for role in await roles.all_roles(store):
            print(json.dumps(role.as_dict()) if args.json else
                  f"{role.name:<20} {'built in' if role.builtin else 'custom':<9} {', '.join(role.listed())}")
    elif args.action == "audit":
        for entry in reversed(await access.audit_entries(store, cli, limit=args.limit)):
            if args.json:
                print(json.dumps(entry))
            else:
                when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(entry["at"]))
                print(f"{when} {entry['actor']:<22} {entry['scope']:<22} {entry['action']:<18} {entry['object']} "
                      f"{entry['outcome']}")
    else:
        return False
    return True


def _configure_upgrades(sub: Any) -> None:
    upgrade = sub.add_parser("upgrade", help="batch upgrades of nodes from a wheel directory or an OS bundle: "
                                             "create, list, show, stop")
    upgrade_sub = upgrade.add_subparsers(dest="upgrade_action", required=True)
    create = upgrade_sub.add_parser("create", help="record the wheels (or the OS bundle) and hand them to the nodes, "
                                                   "a few at a time")
    create.add_argument("--version", required=True,
                        help="the fieldgate version the wheels hold, or the system version the OS bundle holds")
    create.add_argument("--wheels", type=Path, metavar="DIR",
                        help="fieldgate, its plugins and their dependencies as wheels")
    create.add_argument("--os-bundle", type=Path, metavar="FILE",
                        help="instead of --wheels: a signed RAUC bundle (NAME.raucb, at most 1 GiB) of the "
                             "appliance's system, installed A/B by the nodes that run the appliance image")
    create.add_argument("--nodes", type=lambda text: [n for n in text.split(",") if n], help="a,b,… by name")
    create.add_argument("--labels", type=_labels, default={}, help="k=v,… the nodes whose labels match")
    create.add_argument("--group", help="the nodes of a group")
    create.add_argument("--concurrency", type=int, default=1, help="nodes upgrading at once (default 1)")
    create.add_argument("--max-failures", type=int, default=0,
                        help="failed nodes tolerated; past it the rest are cancelled (default 0)")
    create.add_argument("--deadline", type=_duration, default=120.0,
                        help="how long each node's new version has to come up healthy (default 120s)")
    create.add_argument("--workspace", default="default", help="the workspace of the nodes (default default)")
    show = upgrade_sub.add_parser("show", help="one task with the status of every node")
    show.add_argument("id")
    listing = upgrade_sub.add_parser("list", help="every task with counts per status")
    stop = upgrade_sub.add_parser("stop", help="stop a task: its nodes not started yet are cancelled, the nodes "
                                               "upgrading finish")
    stop.add_argument("id", metavar="TASK")
    for command in (create, show, listing, stop):
        command.add_argument("--json", action="store_true", help="JSON instead of lines")
        _data_dir(command)


def _configure_batches_and_twins(sub: Any) -> None:
    batch = sub.add_parser("batch", help="batch bundles: create, list, revoke (many nodes join with one bundle)")
    batch_sub = batch.add_subparsers(dest="batch_action", required=True)
    batch_create = batch_sub.add_parser("create", help="record a batch and write its bundle")
    batch_create.add_argument("name")
    batch_create.add_argument("-o", "--output", required=True, type=Path, help="the bundle file (.tar.gz)")
    batch_create.add_argument("--count", type=int, default=100, help="how many nodes may join with it (default 100)")
    batch_create.add_argument("--ttl", type=_duration, default=30 * 86400.0, help="how long it is valid "
                                                                                  "(default 30d)")
    batch_create.add_argument("--labels", type=_labels, default={}, help="k=v,… given to its nodes")
    batch_create.add_argument("--prefix", default=None, help="node names are <prefix>-<serial or hostname> "
                                                            "(default: the batch name)")
    batch_create.add_argument("--url", action="append", default=[], metavar="URL",
                              help="https://HOST:PORT of the registry, repeatable (default: where `registry serve` "
                                   "last listened)")
    batch_create.add_argument("--workspace", default="default", help="the workspace its nodes join (default default)")
    _data_dir(batch_create)
    batch_list = batch_sub.add_parser("list", help="list batches with their status and how many nodes joined")
    batch_list.add_argument("--json", action="store_true", help="one JSON object per batch")
    _data_dir(batch_list)
    batch_revoke = batch_sub.add_parser("revoke", help="refuse every further node of a batch")
    batch_revoke.add_argument("name")
    _data_dir(batch_revoke)

    devices = sub.add_parser("devices", help="devices the nodes report, with desired against reported values")
    devices.add_argument("--node", default=None, help="only this node's devices")
    devices.add_argument("--json", action="store_true", help="one JSON object per device")
    _data_dir(devices)
    desired = sub.add_parser("set-desired", help="set desired values of a device; its node applies them")
    desired.add_argument("device", metavar="NS/NAME")
    desired.add_argument("values", nargs="+", metavar="PROP=VALUE", help="VALUE as JSON, else as a string")
    desired.add_argument("--node", default=None, help="the node, when several have such a device")
    _data_dir(desired)


async def _batch_and_twin_commands(store: Any, args: argparse.Namespace) -> bool:
    """Run `registry batch|devices|set-desired`; False for any other action."""
    from gateway.registry import access, batch, twins
    from gateway.registry.ca import CertificateAuthority

    cli = access.cli_caller()
    if args.action == "batch" and args.batch_action == "create":
        ca = CertificateAuthority.load_or_create(args.data_dir)
        async with access.audited(store, cli, "batch.create", f"batch/{args.name}",
                                  access.workspace_scope(args.workspace)) as entry:
            entry.detail = {"count": args.count, "labels": args.labels, "prefix": args.prefix}
            await access.check_workspace(store, args.workspace)
            bundle = await batch.create_batch(store, ca, args.name, count=args.count, ttl=args.ttl,
                                              labels=args.labels, prefix=args.prefix,
                                              urls=args.url or batch.known_urls(args.data_dir),
                                              workspace=args.workspace)
        from gateway.pki import write_private

        write_private(args.output, bundle)
        print(f"batch {args.name}: bundle for {args.count} nodes in {args.output}")
    elif args.action == "batch" and args.batch_action == "revoke":
        async with access.audited(store, cli, "batch.revoke", f"batch/{args.name}",
                                  access.workspace_scope(await store.batches.workspace(args.name))):
            await batch.revoke_batch(store, args.name)
        print(f"batch {args.name} revoked")
    elif args.action == "batch":
        for item in await batch.list_batches(store):
            print(json.dumps(item) if args.json else f"{item['name']:<20} {item['status']:<8} "
                  f"{item['used']}/{item['count']} joined  prefix {item['prefix']}  until "
                  f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(item['expires_at']))}")
    elif args.action == "devices":
        for view in await twins.device_views(store, node=args.node):
            print(json.dumps(view) if args.json else _device_line(view))
    elif args.action == "set-desired":
        namespace, _, name = args.device.partition("/")
        if not namespace or not name:
            raise ConfigError(f"{args.device}: expected NS/NAME")
        values = {}
        for item in args.values:
            prop, sep, text = item.partition("=")
            if not sep or not prop:
                raise ConfigError(f"{item}: expected PROP=VALUE")
            try:
                values[prop] = json.loads(text)
            except ValueError:
                values[prop] = text
        node = await twins.device_node(store, namespace, name, args.node)
        async with access.audited(store, cli, "device.set-desired", f"device/{namespace}/{name}",
                                  access.workspace_scope(await access.node_workspace(store, node))) as entry:
            entry.detail = {"node": node, "desired": values}
            view = await twins.set_desired(store, namespace, name, values, node)
        print(f"{args.device} on node {view['node']}: desired " + ", ".join(
            f"{prop}={json.dumps(view['twin'][prop]['desired'])}" for prop in values) + " (pending)")
    else:
        return False
    return True


def _device_line(view: dict[str, Any]) -> str:
    props = "  ".join(
        f"{prop}={json.dumps(entry.get('reported'))}"
        + (f" (desired {json.dumps(entry['desired'])}, {entry['desired_status']})"
           if entry.get("desired") is not None else "")
        for prop, entry in sorted(view["twin"].items()))
    return f"{view['node']:<20} {view['namespace']}/{view['name']:<24} {view['state']:<9} {props or '-'}"
