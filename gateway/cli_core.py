"""The core CLI commands: run, check, plugins, token, user, demo (registered as a built-in plugin)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from gateway.commands import Command
from gateway.errors import ConfigError
from gateway.hookspecs import hookimpl
from gateway.plugins import get_plugin_manager, list_plugins
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import load_path
from gateway.sinks.registry import endpoint_registry

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger(__name__)
DEFAULT_DATA_DIR = "./fieldgate-data"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _data_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, type=Path,
                        help=f"where the store lives (default {DEFAULT_DATA_DIR})")


# --- run -------------------------------------------------------------------------------------------------------


def _configure_run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, type=Path, help="a YAML file or a directory of them")
    _data_dir_arg(parser)
    parser.add_argument("--log-format", choices=("human", "json"), default="human")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")


def _run(args: argparse.Namespace) -> int:
    from gateway.cli import setup_logging

    setup_logging(args.log_format, args.log_level)  # with the recent log behind /logs
    return asyncio.run(serve(args.config, args.data_dir))


async def serve(config: Path, data_dir: Path) -> int:
    """Run the gateway with its web app until SIGINT or SIGTERM, then shut down cleanly (a second one exits at
    once); SIGHUP reloads the configuration files (only changed devices restart; invalid files are refused and
    logged)."""
    import importlib

    from gateway.runtime import Gateway
    from gateway.web.listen import bind

    gateway = Gateway.from_path(config, data_dir)
    sock = bind(gateway.config.gateway.http.listen)  # a taken port is a clear error before anything starts
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_stop_signal(sig: signal.Signals) -> None:
        if stop.is_set():  # the second one: whoever sends it does not want to wait for the clean shutdown
            force_exit(sig)
        log.info("%s: stopping (send it again to exit at once)", sig.name)
        stop.set()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_stop_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    try:
        try:
            await gateway.start()
        except BaseException:
            sock.close()
            raise
        try:
            # The devices poll from here on; the web layer (most of the start-up's imports) loads beside them.
            web = await asyncio.to_thread(importlib.import_module, "gateway.web.server")
            async with web.WebServer(gateway, sock=sock, owns_gateway=False):
                await _serve_until_stopped(gateway, stop, reload)
        finally:
            await gateway.stop()
    finally:
        for sig in (*STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(sig)
    return 0


async def _serve_until_stopped(gateway: Gateway, stop: asyncio.Event, reload: asyncio.Event) -> None:
    while not stop.is_set():
        await _first_of(stop, reload)
        if reload.is_set() and not stop.is_set():
            reload.clear()
            with contextlib.suppress(ConfigError):  # refused: logged with every problem, old config kept
                await gateway.configuration.reload_files()


def force_exit(sig: signal.Signals) -> NoReturn:
    """Leave now, without the rest of the shutdown: committed data is safe (SQLite WAL), queued readings are lost."""
    log.warning("%s, a second stop signal: exiting at once, without finishing the shutdown; readings not yet "
                "stored are lost", sig.name)
    logging.shutdown()  # flush the log handlers: os._exit skips that
    os._exit(128 + sig)


async def _first_of(*events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


# --- check -----------------------------------------------------------------------------------------------------


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, help="a YAML file or a directory of them")


def _check(args: argparse.Namespace) -> int:
    pm = get_plugin_manager()
    config = load_path(args.path, protocol_registry(pm), endpoint_registry(pm))
    for note in config.older_forms.values():
        print(f"note: {note}", file=sys.stderr)
    kinds: dict[str, int] = {}
    for doc in config.documents:
        kinds[doc.kind] = kinds.get(doc.kind, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no documents"
    print(f"{args.path}: valid ({summary})")
    return 0


# --- get ---------------------------------------------------------------------------------------------------------


def _configure_get(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", help="the document's kind, e.g. Workload")
    parser.add_argument("name", metavar="[NAMESPACE/]NAME")
    parser.add_argument("-c", "--config", type=Path, required=True, help="a YAML file or a directory of them")


def _get(args: argparse.Namespace) -> int:
    import msgspec
    import yaml

    from gateway.resources.schema import enc_hook

    pm = get_plugin_manager()
    config = load_path(args.config, protocol_registry(pm), endpoint_registry(pm))
    namespace, _, name = args.name.rpartition("/")
    key = (args.kind, namespace or "default", name)
    found = next((doc for doc in config.documents if doc.key == key), None)
    if found is None:
        raise ConfigError(f"{args.config}: no {args.kind} {key[1]}/{name}")
    raw = {"kind": found.kind, **msgspec.to_builtins(found, enc_hook=enc_hook)}
    print(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), end="")
    return 0


# --- plugins ---------------------------------------------------------------------------------------------------


def _configure_plugins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON object per plugin")


def _plugins(args: argparse.Namespace) -> int:
    import json

    pm = get_plugin_manager()
    infos = list_plugins(pm, serves=True)
    if args.json:
        for info in infos:
            print(json.dumps({"name": info.name, "distribution": info.distribution, "version": info.version,
                              "hooks": list(info.hooks), "serves": {k: list(v) for k, v in info.serves.items()}}))
        return 0
    width = max(len(i.name) for i in infos)
    for info in infos:
        served = "; ".join(f"{SERVED_LABELS[hook]}: {', '.join(names)}" for hook, names in info.serves.items())
        print(f"{info.name:<{width}}  {info.distribution} {info.version}  ({', '.join(info.hooks)})"
              + (f"  {served}" if served else ""))
    return 0


SERVED_LABELS = {"register_protocols": "protocols", "register_sinks": "sinks",
                 "register_endpoint_types": "endpoint types", "register_runtimes": "runtimes"}


# --- token and user --------------------------------------------------------------------------------------------


def _configure_token(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="print a new API token")
    create.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    create.add_argument("--description", default="")
    _data_dir_arg(create)


def _token(args: argparse.Namespace) -> int:
    from gateway.web.auth import create_token

    async def create() -> str:
        async with open_store(args.data_dir) as store:
            token = await create_token(store, args.role, args.description)
            await store.audit.record("cli", "token-create", f"role {args.role}", args.description)
            return token

    print(asyncio.run(create()))
    return 0


def _configure_user(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    add = sub.add_parser("add", help="add a user or change its role and password")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("viewer", "operator", "admin"))
    add.add_argument("--password-stdin", action="store_true", required=True,
                     help="read the password from the first line of standard input")
    _data_dir_arg(add)


def _user(args: argparse.Namespace) -> int:
    from gateway.web.auth import add_user

    password = sys.stdin.readline().rstrip("\r\n")

    async def add() -> None:
        async with open_store(args.data_dir) as store:
            await add_user(store, args.name, args.role, password)
            await store.audit.record("cli", "user-add", args.name, f"role {args.role}")

    asyncio.run(add())
    print(f"user {args.name} ({args.role}) saved")
    return 0


@contextlib.asynccontextmanager
async def open_store(data_dir: Path):  # type: ignore[no-untyped-def]
    from gateway.store import Store

    store = Store(data_dir)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


# --- demo ------------------------------------------------------------------------------------------------------


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("./demo-data"))
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT of the web UI and API")


def _demo(args: argparse.Namespace) -> int:
    from gateway.cli import setup_logging
    from gateway.ops.demo import write_demo_config
    from gateway.web.auth import add_user, create_token

    setup_logging("human")
    config_dir = write_demo_config(args.data_dir / "config", listen=args.listen)
    password = secrets.token_urlsafe(12)

    async def credentials() -> str:
        async with open_store(args.data_dir) as store:
            await add_user(store, "admin", "admin", password)
            return await create_token(store, "admin", "demo")

    token = asyncio.run(credentials())
    print(f"fieldgate demo on http://{args.listen}/\n"
          f"  user admin, password {password}\n"
          f"  API token (admin): {token}\n"
          f"  try: curl -H 'Authorization: Bearer {token}' http://{args.listen}/api/v1/devices\n"
          f"  config in {config_dir}; stop with Ctrl-C", flush=True)
    return asyncio.run(serve(config_dir, args.data_dir))


@hookimpl
def register_commands() -> list[Command]:
    return [
        Command("run", "run the gateway until SIGINT/SIGTERM", _configure_run, _run),
        Command("check", "check resource documents; exit 2 with one line per problem", _configure_check, _check),
        Command("get", "print one document of the configuration as the gateway reads it (annotations and "
                "defaults included)", _configure_get, _get),
        Command("plugins", "list loaded plugins with their distribution and version", _configure_plugins, _plugins),
        Command("token", "manage API tokens", _configure_token, _token),
        Command("user", "manage local users", _configure_user, _user),
        Command("demo", "run the gateway against simulated devices, with its web UI", _configure_demo, _demo),
        Command("browse", "find the devices of a protocol and write documents for them", _configure_browse,
                _browse),
    ]


# --- browse -------------------------------------------------------------------------------------------------------


def _configure_browse(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="protocol", metavar="PROTOCOL", required=True,
                                parser_class=type(parser))
    for browsers in get_plugin_manager().hook.register_browsers():
        for browser in browsers:
            browser_parser = sub.add_parser(browser.name, help=browser.help, description=browser.help)
            browser.configure_parser(browser_parser)
            browser_parser.set_defaults(browse=browser.runner())


def _browse(args: argparse.Namespace) -> int:
    run: Any = args.browse
    return int(run(args))


def fail(message: str) -> None:
    raise ConfigError(message)
