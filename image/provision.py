"""Applies the appliance's provisioning file (fieldgate-provision.yaml on the boot partition) once, at first boot.

Run by fieldgate-firstboot.service with the active slot's python, before the gateway starts: checks the whole
file first (the documents as `fieldgate check` does), then writes the documents to the configuration directory,
stores the admin user with the given argon2 hash, joins the registry when one is named, and renames the file to
`<file>.applied`. A refused file stays in place, nothing is changed, and the one-line reason goes to stderr (the
journal) and to `fieldgate-provision.error` beside the file. Exit 0 when applied, 2 when refused, 1 when the
registry join failed after the rest was applied.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import yaml

from gateway.errors import ConfigError, FieldgateError, ResourceError
from gateway.plugins import get_plugin_manager
from gateway.protocols.registry import protocol_registry
from gateway.resources.loader import load_path
from gateway.resources.schema import check_node_name
from gateway.sinks.registry import endpoint_registry
from gateway.store import Store

CONFIG_FILE = "provisioned.yaml"
SERVICE_USER = "fieldgate"
WAIT_ONLINE_TIMEOUT = 150.0


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Admin(Base, kw_only=True):
    name: str = "admin"
    password_hash: str


class Registry(Base, kw_only=True):
    url: str
    token: str
    name: str | None = None


class Provisioning(Base, kw_only=True):
    admin: Admin | None = None
    registry: Registry | None = None
    documents: list[dict[str, Any]] = []


class Refused(Exception):
    """The provisioning file cannot be applied; the message names the file and what is wrong."""


def read(file: Path) -> Provisioning:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise Refused(f"{file}: not a readable YAML file: {str(exc).splitlines()[0]}") from None
    try:
        provisioning = msgspec.convert(raw, Provisioning)
    except msgspec.ValidationError as exc:
        raise Refused(f"{file}: {exc}") from None
    if provisioning.admin is not None and not provisioning.admin.password_hash.startswith("$argon2"):
        raise Refused(f"{file}: $.admin.password_hash: expected an argon2 hash ($argon2id$...), not a password")
    if provisioning.registry is not None and provisioning.registry.name is not None:
        try:  # found when the image is built (--check), not at the first boot
            check_node_name(provisioning.registry.name, "$.registry.name")
        except ConfigError as exc:
            raise Refused(f"{file}: {exc}") from None
    if not any(doc.get("kind") == "Gateway" for doc in provisioning.documents):
        raise Refused(f"{file}: $.documents: a Gateway document is required")
    return provisioning


def check_documents(file: Path, provisioning: Provisioning, staging: Path) -> Path:
    """Write the documents as one YAML file in `staging` and check them as `fieldgate check` does."""
    config = staging / CONFIG_FILE
    config.write_text(yaml.safe_dump_all(provisioning.documents, sort_keys=False), encoding="utf-8")
    try:
        pm = get_plugin_manager()
        load_path(config, protocol_registry(pm), endpoint_registry(pm))
    except ResourceError as exc:
        problem = exc.problems[0].removeprefix(f"{config}: ")
        raise Refused(f"{file}: $.documents: {problem}") from None
    except FieldgateError as exc:
        raise Refused(f"{file}: $.documents: {exc}") from None
    return config


async def store_admin(data_dir: Path, admin: Admin) -> None:
    store = Store(data_dir)
    await store.open()
    try:
        await store.users.put(admin.name, "admin", admin.password_hash)
        await store.audit.record("provisioning", "user-add", admin.name, "role admin")
    finally:
        await store.close()


def chown_tree(path: Path, user: str) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return  # not on the appliance: leave ownership alone
    for directory, _, files in os.walk(path):
        os.chown(directory, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(directory, name), entry.pw_uid, entry.pw_gid)


def wait_online(command: str) -> None:
    """Run the command that waits for the network (the appliance: systemd-networkd-wait-online) before a join."""
    argv = shlex.split(command)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=WAIT_ONLINE_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"the network: not online within {WAIT_ONLINE_TIMEOUT:g} s ({command})") from None
    except OSError as exc:
        raise RuntimeError(f"the network: {command}: {exc}") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise RuntimeError(f"the network is not online ({command}): {reason}")


def join(registry: Registry, data_dir: Path) -> None:
    command = [sys.executable, "-m", "gateway", "join", "--registry", registry.url, "--token", registry.token,
               "--data-dir", str(data_dir)]
    if registry.name:
        command += ["--name", registry.name]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"registry join at {registry.url}: no answer within 120 s") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise RuntimeError(f"registry join at {registry.url}: {reason}")


def apply(file: Path, config_dir: Path, data_dir: Path, wait_online_command: str | None = None) -> None:
    provisioning = read(file)
    with tempfile.TemporaryDirectory() as staging:
        config = check_documents(file, provisioning, Path(staging))
        config_dir.mkdir(parents=True, exist_ok=True)
        for old in config_dir.glob("*.yaml"):
            old.unlink()
        shutil.copyfile(config, config_dir / CONFIG_FILE)
    data_dir.mkdir(parents=True, exist_ok=True)
    if provisioning.admin is not None:
        asyncio.run(store_admin(data_dir, provisioning.admin))
    file.replace(file.with_name(file.name + ".applied"))
    file.with_name("fieldgate-provision.error").unlink(missing_ok=True)
    os.sync()  # the boot partition is FAT: make the rename stick even if the power goes now
    try:
        if provisioning.registry is not None:
            if wait_online_command:
                wait_online(wait_online_command)
            join(provisioning.registry, data_dir)
    finally:
        chown_tree(data_dir, SERVICE_USER)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, required=True)
    parser.add_argument("--check", action="store_true", help="only check the file (as image/build.sh does)")
    parser.add_argument("--config-dir", type=Path)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--wait-online", metavar="COMMAND",
                        help="a command that waits until the network is up, run before joining a registry only")
    args = parser.parse_args(argv)
    if not args.check and (args.config_dir is None or args.data_dir is None):
        parser.error("--config-dir and --data-dir are required unless --check")
    try:
        if args.check:
            with tempfile.TemporaryDirectory() as staging:
                check_documents(args.file, read(args.file), Path(staging))
            print(f"{args.file}: valid")
            return 0
        apply(args.file, args.config_dir, args.data_dir, args.wait_online)
    except Refused as exc:
        if args.check:
            print(f"provisioning file refused: {exc}", file=sys.stderr)
            return 2
        print(f"provisioning refused: {exc}", file=sys.stderr)
        try:
            args.file.with_name("fieldgate-provision.error").write_text(f"{exc}\n", encoding="utf-8")
        except OSError:
            pass
        return 2
    except RuntimeError as exc:
        print(f"provisioning applied, but {exc}", file=sys.stderr)
        return 1
    print(f"provisioning applied from {args.file}: configuration in {args.config_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
