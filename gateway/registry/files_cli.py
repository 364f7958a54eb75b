"""`fieldgate registry files push|list|show|download|delete`: files through the running registry's API (a token from
--token or FIELDGATE_REGISTRY_TOKEN, else one made for the call and deleted after it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import mimetypes
import os
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from gateway.errors import ConfigError

CHUNK = 1 << 20


def configure_files(sub: Any, data_dir: Callable[[argparse.ArgumentParser], None],
                    duration: Callable[[str], float]) -> None:
    files = sub.add_parser("files", help="files both ways: push to nodes, list, show progress, download, delete")
    files_sub = files.add_subparsers(dest="files_action", required=True)
    push = files_sub.add_parser("push", help="send a file to nodes (a progress bar while it uploads)")
    push.add_argument("file", type=Path)
    target = push.add_mutually_exclusive_group(required=True)
    target.add_argument("--node", action="append", default=[], help="a node (again for more nodes)")
    target.add_argument("--group", help="the nodes of a group")
    push.add_argument("--path", default="", help="where in the node's files area (a relative directory; default "
                                                 "the area itself)")
    push.add_argument("--name", help="the file's name on the nodes (default: its name here)")
    push.add_argument("--ttl", type=duration, default=7 * 86400.0,
                      help="how long nodes may take to fetch it (default 7d)")
    push.add_argument("--labels", default="", help="k=v,…")
    push.add_argument("--content-type", help="default: guessed from the name")
    push.add_argument("--wait", action="store_true", help="wait until every node has it (or refused it)")
    listing = files_sub.add_parser("list", help="files both ways, newest first")
    listing.add_argument("--direction", choices=("to-edge", "from-edge"))
    show = files_sub.add_parser("show", help="one file with each node's progress")
    show.add_argument("id")
    download = files_sub.add_parser("download", help="download a file")
    download.add_argument("id")
    download.add_argument("-o", "--output", type=Path, help="where (default: its name, here)")
    remove = files_sub.add_parser("delete", help="delete a file")
    remove.add_argument("id")
    for command in (push, listing, show, download, remove):
        command.add_argument("--registry", help="https://HOST:PORT of the running registry (default: where "
                                                "`registry serve` last listened)")
        command.add_argument("--token", default=os.environ.get("FIELDGATE_REGISTRY_TOKEN") or None,
                             help="an API token (default: env FIELDGATE_REGISTRY_TOKEN, else one made for this call)")
        command.add_argument("--json", action="store_true", help="JSON instead of lines")
        data_dir(command)


@contextlib.contextmanager
def _client(args: argparse.Namespace, role: str) -> Iterator[httpx.Client]:
    from gateway.registry.access import PLATFORM, Scope, create_api_token
    from gateway.registry.batch import known_urls
    from gateway.registry.logs import local_url
    from gateway.registry.store import RegistryStore

    url = (args.registry or local_url(known_urls(args.data_dir))).rstrip("/")
    token = args.token

    async def made() -> str:
        async with RegistryStore(args.data_dir, args.db) as store:
            return await create_api_token(store, role, Scope.parse(PLATFORM), f"fieldgate registry files "
                                                                              f"{args.files_action}")

    async def forget(token_id: str) -> None:
        async with RegistryStore(args.data_dir, args.db) as store:
            await store.access.delete_api_token(token_id)

    if token is None:
        token = asyncio.run(made())
        own = True
    else:
        own = False
    context = ssl.create_default_context(cafile=str(args.data_dir / "ca.pem"))
    try:
        with httpx.Client(base_url=url, verify=context, headers={"Authorization": f"Bearer {token}"},
                          timeout=httpx.Timeout(30.0, read=300.0)) as client:
            yield client
    except httpx.HTTPError as exc:
        raise ConfigError(f"--registry {url}: {type(exc).__name__}: {exc}") from None
    finally:
        if own:
            asyncio.run(forget(token.partition(".")[0]))


def _answer(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text.strip()[:200]
        raise ConfigError(f"{response.status_code}: {detail}")
    return response.json()


def _progress_of(record: dict[str, Any]) -> str:
    if record["direction"] == "from-edge":
        return f"from {record['source_node']}: {record['state']} {record['received']}/{record['size']} bytes"
    states = record.get("node_states") or {}
    return "to nodes: " + (", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "none")


def run_files_command(args: argparse.Namespace) -> int:
    if args.files_action == "push":
        return _push(args)
    role = "operator" if args.files_action == "delete" else "viewer"
    with _client(args, role) as client:
        if args.files_action == "list":
            params = {"direction": args.direction} if args.direction else {}
            for record in _answer(client.get("/api/v1/files", params=params)):
                if args.json:
                    print(json.dumps(record))
                else:
                    print(f"{record['id']}  {record['name']}  {record['size']} bytes  {_progress_of(record)}")
        elif args.files_action == "show":
            record = _answer(client.get(f"/api/v1/files/{args.id}"))
            if args.json:
                print(json.dumps(record))
            else:
                print(f"{record['name']} ({record['size']} bytes, sha256 {record['sha256']}), {record['direction']}")
                for node in record.get("nodes", []):
                    print(f"  {node['node']}: {node['state']} {node['position']}/{record['size']}"
                          + (f" ({node['reason']})" if node["reason"] else ""))
        elif args.files_action == "download":
            _download(client, args)
        else:
            _answer(client.delete(f"/api/v1/files/{args.id}"))
            print(f"file {args.id} deleted")
    return 0


def _download(client: httpx.Client, args: argparse.Namespace) -> None:
    record = _answer(client.get(f"/api/v1/files/{args.id}"))
    output: Path = args.output or Path(record["name"])
    partial = output.with_name(output.name + ".part")
    with client.stream("GET", f"/api/v1/files/{args.id}/content") as response:
        if response.status_code != 200:
            response.read()
            _answer(response)
        with partial.open("wb") as stream:
            for block in response.iter_bytes(CHUNK):
                stream.write(block)
            stream.flush()
            os.fsync(stream.fileno())
    os.replace(partial, output)
    print(f"{output}: {record['size']} bytes")


def _push(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    path: Path = args.file
    if not path.is_file():
        raise ConfigError(f"{path}: not a file")
    size = path.stat().st_size
    name = args.name or path.name
    content_type = args.content_type or mimetypes.guess_type(name)[0] or "application/octet-stream"
    params = {"name": name, "path": args.path, "ttl": f"{args.ttl:g}", "content_type": content_type}
    if args.labels:
        params["labels"] = args.labels
    if args.node:
        params["nodes"] = ",".join(args.node)
    else:
        params["group"] = args.group
    columns = ("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    # on stderr, and only on a terminal: stdout stays the answer (JSON with --json)
    console = Console(stderr=True)
    with _client(args, "operator") as client, Progress(*columns, console=console, transient=args.json,
                                                       disable=not console.is_terminal) as bar:
        task = bar.add_task(f"upload {name}", total=size)

        def body() -> Iterator[bytes]:
            with path.open("rb") as stream:
                while block := stream.read(CHUNK):
                    bar.advance(task, len(block))
                    yield block

        record = _answer(client.post("/api/v1/files", params=params, content=body(),
                                     headers={"Content-Length": str(size), "Content-Type": content_type}))
        if args.wait:
            nodes = {n["node"]: bar.add_task(f"  {n['node']}", total=size) for n in record["nodes"]}
            deadline = time.monotonic() + args.ttl
            while time.monotonic() < deadline:
                record = _answer(client.get(f"/api/v1/files/{record['id']}"))
                for node in record["nodes"]:
                    bar.update(nodes[node["node"]], completed=node["position"],
                               description=f"  {node['node']} {node['state']}")
                if all(n["state"] in ("done", "refused", "expired") for n in record["nodes"]):
                    break
                time.sleep(0.5)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"file {record['id']} ({record['size']} bytes, sha256 {record['sha256']}) for "
              f"{', '.join(n['node'] for n in record['nodes'])}")
        if args.wait:
            for node in record["nodes"]:
                print(f"  {node['node']}: {node['state']}" + (f" ({node['reason']})" if node["reason"] else ""))
    refused = args.wait and any(n["state"] != "done" for n in record["nodes"])
    return 1 if refused else 0
