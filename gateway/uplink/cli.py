"""`fieldgate join`: join this gateway to a registry with a join token or a batch bundle (a built-in plugin)."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from gateway.commands import Command
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl


def _configure_join(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", default=None, help="https://HOST:PORT of the registry (with --bundle: default "
                                                         "the bundle's URLs)")
    credential = parser.add_mutually_exclusive_group(required=True)
    credential.add_argument("--token", help="a token from `fieldgate registry join-token create`")
    credential.add_argument("--bundle", type=Path, help="a batch bundle from `fieldgate registry batch create`")
    parser.add_argument("--name", default=None, help="the node name to ask for (default: the registry picks; with "
                                                     "--bundle: <prefix>-<NAME> instead of the serial or hostname)")
    parser.add_argument("--data-dir", type=Path, default=Path("./fieldgate-data"),
                        help="the gateway's data dir (default ./fieldgate-data)")


def _join(args: argparse.Namespace) -> int:
    from gateway.uplink.join import join, join_with_bundle

    if args.bundle is not None:
        settings = asyncio.run(join_with_bundle(args.registry, args.bundle, args.data_dir, name=args.name))
    elif args.registry is None:
        raise ConfigError("--registry: required with --token")
    else:
        settings = asyncio.run(join(args.registry, args.token, args.data_dir, name=args.name))
    print(f"joined {settings.url} as node {settings.node}")
    return 0


@hookimpl
def register_commands() -> list[Command]:
    return [Command("join", "join this gateway to a registry with a join token or a batch bundle", _configure_join,
                    _join)]
