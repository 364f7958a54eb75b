"""`fieldgate browse opcua URL …`: the arguments; the walk itself is in browse.py (it needs asyncua)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
from pathlib import Path
from typing import Any

import msgspec

from fieldgate_opcua.config import OpcuaConfig
from gateway.errors import ConfigError
from gateway.resources.durations import Duration
from gateway.resources.schema import NAME_PATTERN


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", metavar="URL", help="the server's endpoint, opc.tcp://HOST:PORT[/PATH]")
    parser.add_argument("--path-pattern", action="append", default=[], metavar="PATTERN",
                        help="take the variables whose path of names from the Objects folder matches this glob "
                             "(`Line1/*`, `*/Temp`; `**` crosses folders); repeat for more; default: all outside "
                             "the Server object")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the documents here (default: stdout)")
    parser.add_argument("--name", help="the Device's name (default: from the server's application name)")
    parser.add_argument("--model", help="the DeviceModel's name (default: the Device's)")
    parser.add_argument("--namespace", default="default", help="the documents' namespace")
    parser.add_argument("--mode", choices=("subscription", "poll"), default="subscription",
                        help="how the properties' values come (default: subscription)")
    parser.add_argument("--interval", default="1s", help="the properties' collect_interval (default: 1s)")
    parser.add_argument("--visitor", choices=("node_id", "browse_path"), default="node_id",
                        help="address the variables by NodeId (default) or by browse path")
    parser.add_argument("--max-depth", type=int, default=10, help="folders to descend at most (default: 10)")
    parser.add_argument("--max-nodes", type=int, default=10_000,
                        help="nodes to visit at most, against an endless address space (default: 10000)")
    security = parser.add_argument_group("security and login (as the device's protocol config takes them)")
    security.add_argument("--security-policy", choices=("None", "Basic256Sha256"), default="None")
    security.add_argument("--security-mode", choices=("Sign", "SignAndEncrypt"))
    security.add_argument("--server-certificate", metavar="FILE", help="accept only this server certificate")
    security.add_argument("--trusted-certificates", metavar="DIR", help="a folder of trusted certificates")
    security.add_argument("--certificate", metavar="FILE", help="the gateway's application certificate")
    security.add_argument("--private-key", metavar="FILE", help="its key")
    security.add_argument("--data-dir", type=Path, metavar="DIR",
                          help="the gateway's data dir: its own certificate (made there if missing) and trust folder")
    security.add_argument("--username", help="log in with this username")
    security.add_argument("--password-file", metavar="FILE", help="a file whose first line is the password")
    security.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for one answer (default: 5)")


def protocol_config(args: argparse.Namespace) -> dict[str, Any]:
    """The device's `protocol.config` from the arguments (what the written Device carries too)."""
    raw: dict[str, Any] = {"endpoint": args.url}
    if args.security_policy != "None":
        raw["security_policy"] = args.security_policy
        if args.security_mode:
            raw["security_mode"] = args.security_mode
    for key in ("server_certificate", "trusted_certificates", "certificate", "private_key", "password_file"):
        value = getattr(args, key)
        if value:
            raw[key] = str(Path(value).resolve())
    if args.username:
        raw.update(login="username", username=args.username)
    if args.timeout != 5.0:
        raw["timeout"] = args.timeout
    return raw


def run(args: argparse.Namespace) -> int:
    raw = protocol_config(args)
    try:
        config = msgspec.convert(raw, OpcuaConfig, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{exc}") from exc
    for option, value in (("--name", args.name), ("--model", args.model), ("--namespace", args.namespace)):
        if value is not None and not _is_name(value):
            raise ConfigError(f"{option} {value!r}: expected lowercase letters, digits, '-' and '.'")
    try:
        interval = Duration.parse(args.interval)
    except ValueError as exc:
        raise ConfigError(f"--interval: {exc}") from exc
    if not 1 <= args.max_depth <= 100 or not 1 <= args.max_nodes <= 1_000_000:
        raise ConfigError("--max-depth takes 1 to 100, --max-nodes 1 to 1000000")

    from fieldgate_opcua import browse  # asyncua is heavy: imported when a browse runs

    logging.getLogger("asyncua").setLevel(logging.ERROR)  # its notes on revised parameters are no news here
    found = asyncio.run(browse.walk(config, raw, args, interval))
    text = browse.dump(found.documents)
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    where = f" to {args.output}" if args.output is not None else ""
    print(f"fieldgate browse opcua: {found.summary()}{where}", file=sys.stderr)
    return 0


def _is_name(value: str) -> bool:
    return len(value) <= 253 and re.fullmatch(NAME_PATTERN, value) is not None
