"""System (OS) updates of the appliance image: signed RAUC bundles into the other root slot, with boot counting.

The appliance has two root slots (root-a, root-b), each a read-only squashfs with its kernel and initrd on the EFI
system partition, one systemd-boot entry per slot. An update goes like this:

1. The gateway (unprivileged) is handed an OS bundle by an UpgradeTask (gateway.uplink.upgrade), downloads it and
   asks for it: `request_update` writes `<data dir>/os-update/request.json`.
2. `fieldgate-os-update.path` (root) sees the request and starts `fieldgate os-update apply`: RAUC checks the
   bundle's signature against the image's keyring and its version against the request, writes the other slot and
   its boot files, and makes it the primary with one boot try (the custom bootloader backend
   /usr/lib/fieldgate/rauc-bootloader renames its entry to `fieldgate-b+1.conf`); then the system reboots.
3. systemd-boot counts the try down (`fieldgate-b+0-1.conf`) and boots the new slot. Before boot-complete.target,
   `fieldgate os-update boot-check` (fieldgate-os-health.service, root) waits for the gateway to answer healthy. If it
   does, the boot is complete and systemd-bless-boot marks the entry good: the update stays. If it does not within
   its deadline, the unit fails, the system reboots and systemd-boot, finding the entry with no tries left, sorts it
   last and boots the old slot again by itself (so does a kernel that panics or hangs before userspace: `panic=10`).
4. On every boot `boot-check` writes `<data dir>/os-update/system.json` (the booted slot and the system's version) for
   the gateway's heartbeat, and settles a pending request: `succeeded` when the requested slot came up healthy,
   `failed-rolled-back` when the old slot runs again. The statuses go to the upgrade StatusLog the node reports.

Data and configuration live on the data partition, which an update never writes.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.commands import Command
from gateway.durable import write_durable
from gateway.errors import ConfigError, FieldgateError
from gateway.hookspecs import hookimpl
from gateway.ops.upgrade import DEFAULT_DATA_DIR, ROLLED_BACK, SUCCEEDED, UPGRADING, StatusLog, UpgradeFailed
from gateway.resources.durations import Duration
from gateway.resources.loader import load_path

OS_DIR = "os-update"
REQUEST = "request.json"
SYSTEM = "system.json"
BUNDLE_FILE = re.compile(r"^[A-Za-z0-9_.+-]{1,200}\.raucb$")
MAX_BUNDLE_BYTES = 1024 * 1024 * 1024


def directory(data_dir: Path) -> Path:
    return data_dir / OS_DIR


def _write_json(path: Path, value: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_durable(path, (json.dumps(value, indent=2) + "\n").encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def system_state(data_dir: Path) -> dict[str, Any] | None:
    """The booted system as the last boot check wrote it ({"slot", "version", "compatible"}); None on a node that
    is not the appliance image (no A/B system slots)."""
    return _read_json(directory(data_dir) / SYSTEM)


def request_update(data_dir: Path, *, task: str, version: str, bundle: Path, deadline: float) -> Path:
    """Ask the system updater (root) to install `bundle`, which must be in the data dir; the request file."""
    path = directory(data_dir) / REQUEST
    _write_json(path, {"task": task, "version": version, "bundle": str(bundle.resolve()), "deadline": deadline,
                       "requested_at": round(time.time(), 3)})
    return path


# --- the root side: `fieldgate os-update apply` and `fieldgate os-update boot-check` ------------------------------

PENDING = "pending.json"
INSTALLING, REBOOTING = "installing", "rebooting"
SLOT_NAMES = {"rootfs.0": "a", "rootfs.1": "b"}
DEFAULT_ESP = Path("/boot/efi")
DEFAULT_BOOTLOADER = Path("/usr/lib/fieldgate/rauc-bootloader")
DEFAULT_RAUC_STATUS = Path("/data/rauc.status")
DEFAULT_VERSION_FILE = Path("/usr/lib/fieldgate/system-version")
DEFAULT_RAUC_CONFIG = Path("/etc/rauc/system.conf")
DEFAULT_REBOOT = "systemctl reboot --no-block"
DEFAULT_HEALTH_DEADLINE = 300.0  # a boot that is not a trial of a new slot: how long the gateway may take
MAX_HEALTH_DEADLINE = 3600.0  # the longest a trial boot may wait for the gateway before it falls back
INSTALL_TIMEOUT = 1800.0
LOG_TAIL = 1500


@dataclass
class Machine:
    """Where the system's boot state and tools are; every path is a parameter so that the logic runs in tests."""

    data_dir: Path
    esp: Path = DEFAULT_ESP
    cmdline: Path = Path("/proc/cmdline")
    bootloader: Path = DEFAULT_BOOTLOADER
    rauc: str = "rauc"
    rauc_status: Path = DEFAULT_RAUC_STATUS
    version_file: Path = DEFAULT_VERSION_FILE
    rauc_config: Path = DEFAULT_RAUC_CONFIG
    reboot: str = DEFAULT_REBOOT

    @property
    def directory(self) -> Path:
        return directory(self.data_dir)

    def booted(self) -> str | None:
        """The slot this system booted from (rauc.slot= on the kernel command line)."""
        try:
            words = self.cmdline.read_text(encoding="utf-8").split()
        except OSError:
            return None
        for word in words:
            if word.startswith("rauc.slot="):
                slot = word.removeprefix("rauc.slot=")
                return slot if slot in SLOT_NAMES.values() else None
        return None

    def trial(self, slot: str) -> bool:
        """Whether this is a counted (trial) boot of `slot`: its boot entry still carries a counter."""
        return any((self.esp / "loader" / "entries").glob(f"fieldgate-{slot}+*.conf"))

    def version(self, slot: str) -> str:
        """The system version in `slot`: what RAUC installed there, else the version built into this image."""
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(self.rauc_status, encoding="utf-8")
        for section, name in SLOT_NAMES.items():
            key = f"slot.{section}"
            if name == slot and parser.has_option(key, "bundle.version"):
                return parser.get(key, "bundle.version")
        try:
            return self.version_file.read_text(encoding="utf-8").strip()
        except OSError:
            return ""

    def compatible(self) -> str:
        parser = configparser.ConfigParser(interpolation=None)
        with contextlib.suppress(OSError, configparser.Error):
            parser.read(self.rauc_config, encoding="utf-8")
        return parser.get("system", "compatible", fallback="")

    def give_back(self, *paths: Path) -> None:
        """Files root wrote in the data dir belong to the gateway's user, as the data dir does."""
        owner = self.data_dir.stat()
        for path in paths:
            with contextlib.suppress(OSError):
                os.chown(path, owner.st_uid, owner.st_gid)

    def record(self, **fields: Any) -> dict[str, Any]:
        log = StatusLog(self.data_dir)
        entry = log.record(**fields)
        self.give_back(log.directory, log.directory / "status.json", log.directory / "history.jsonl")
        return entry

    def write(self, name: str, value: dict[str, Any]) -> None:
        path = self.directory / name
        _write_json(path, value)
        self.give_back(self.directory, path)


def _run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str]:
    try:
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return -1, str(exc)
    return done.returncode, done.stdout.decode("utf-8", "replace")


def _other(slot: str) -> str:
    return "b" if slot == "a" else "a"


def _bundle_version(machine: Machine, bundle: Path) -> str:
    """The version in a bundle's manifest, read by `rauc info`, which checks its signature against the keyring."""
    try:
        done = subprocess.run([machine.rauc, "info", "--output-format=json", str(bundle)], capture_output=True,
                              stdin=subprocess.DEVNULL, timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpgradeFailed(f"`rauc info` failed: {exc}") from None
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    if done.returncode != 0:
        raise UpgradeFailed(f"the bundle is refused: {output.strip()[-LOG_TAIL:]}")
    try:
        info = json.loads(done.stdout)
    except ValueError:
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("version"), str):
        raise UpgradeFailed(f"`rauc info` gave no version for the bundle: {output.strip()[-LOG_TAIL:]}")
    return str(info["version"])


def apply(machine: Machine) -> int:
    """Install the requested bundle into the other slot and reboot into it (root; fieldgate-os-update.service)."""
    request = _read_json(machine.directory / REQUEST)
    (machine.directory / REQUEST).unlink(missing_ok=True)  # taken: the path unit must not start this again
    if request is None:
        print("no system update requested")
        return 0
    booted = machine.booted()
    bundle = Path(str(request.get("bundle", "")))
    task_dir = str(bundle.parent)
    common = {"wheels": task_dir, "kind": "os", "version": str(request.get("version", ""))}
    try:
        if booted is None:
            raise UpgradeFailed("this system did not boot from an A/B slot (no rauc.slot= on its command line)")
        if not bundle.is_file() or not bundle.resolve().is_relative_to(machine.data_dir.resolve()) \
                or not BUNDLE_FILE.match(bundle.name):
            raise UpgradeFailed(f"the requested bundle {bundle} is not a .raucb file in {machine.data_dir}")
        target = _other(booted)
        machine.record(status=UPGRADING, reason=f"checking the bundle for slot {target}", **common)
        found = _bundle_version(machine, bundle)
        if found != common["version"]:
            raise UpgradeFailed(f"the bundle holds system version {found}, the task asked for {common['version']}")
        pending = {**request, "task_dir": task_dir, "from_slot": booted, "to_slot": target, "phase": INSTALLING,
                   "from_version": machine.version(booted), "started_at": round(time.time(), 3)}
        machine.write(PENDING, pending)
        machine.record(status=UPGRADING, reason=f"installing system {found} into slot {target}", **common)
        code, output = _run([machine.rauc, "install", str(bundle)], timeout=INSTALL_TIMEOUT)
        if code != 0:
            (machine.directory / PENDING).unlink(missing_ok=True)
            raise UpgradeFailed(f"rauc install failed (exit {code}): {output.strip()[-LOG_TAIL:]}")
    except UpgradeFailed as exc:
        bundle.unlink(missing_ok=True)
        machine.record(status=ROLLED_BACK, reason=str(exc), **common)
        print(f"system update refused: {exc}", file=sys.stderr)
        return 1
    bundle.unlink(missing_ok=True)  # the slot holds it now; the data partition gets its room back
    machine.write(PENDING, {**pending, "phase": REBOOTING})
    machine.record(status=UPGRADING, reason=f"system {found} installed into slot {target}; rebooting into it",
                   **common)
    os.sync()
    print(f"system {found} installed into slot {target}; rebooting")
    code, output = _run(shlex.split(machine.reboot), timeout=60)
    if code != 0:
        print(f"reboot failed (exit {code}): {output}", file=sys.stderr)
    return 0


def _healthy(url: str, deadline: float) -> bool:
    """Whether the gateway answers /healthz with 200 before `deadline` (monotonic)."""
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return True
        except (OSError, ValueError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def _deadline(pending: dict[str, Any] | None, default: float) -> float:
    """The pending update's health deadline in seconds. The request is written by the unprivileged gateway and read
    here by root: anything but a number from 1 s to MAX_HEALTH_DEADLINE (a string, NaN, infinity, a boolean, a
    negative or huge number) gives the default, so that a trial boot never waits for ever nor raises."""
    value = pending.get("deadline") if pending is not None else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1.0 <= value <= MAX_HEALTH_DEADLINE:
        return default
    return float(value)


def boot_check(machine: Machine, url: str, default_deadline: float = DEFAULT_HEALTH_DEADLINE) -> int:
    """Record the booted system, settle a pending update, and judge this boot (root; fieldgate-os-health.service):
    0 when the gateway answered healthy; on a trial boot that did not, reboot into the other slot."""
    started = time.monotonic()
    booted = machine.booted()
    if booted is None:
        print("not booted from an A/B system slot: nothing to check")
        return 0
    version = machine.version(booted)
    machine.write(SYSTEM, {"slot": booted, "version": version, "compatible": machine.compatible(),
                           "booted_at": round(time.time(), 3)})
    pending = _read_json(machine.directory / PENDING)
    common: dict[str, Any] = {}
    if pending is not None:
        common = {"wheels": str(pending.get("task_dir", "")), "kind": "os", "version": str(pending.get("version"))}
        if pending.get("to_slot") != booted:
            target = pending.get("to_slot")
            if pending.get("phase") == INSTALLING:
                reason = (f"the update was cut off while slot {target} was being written (a power cut or a crash); "
                          f"the system in slot {booted} ({version}) was not changed and runs again")
            else:
                reason = (f"the new system {pending.get('version')} in slot {target} did not come up healthy"
                          f"{': ' + str(pending['failure']) if pending.get('failure') else ''}; slot {booted} "
                          f"({version}) booted again by itself")
            machine.record(status=ROLLED_BACK, reason=reason, **common)
            (machine.directory / PENDING).unlink(missing_ok=True)
            print(f"system update rolled back: {reason}")
            pending = None
    trial = machine.trial(booted)
    deadline_s = _deadline(pending, default_deadline)
    if _healthy(url, started + deadline_s):
        if trial:
            code, output = _run([str(machine.bootloader), "set-state", booted, "good"], timeout=60,
                                env={**os.environ, "FIELDGATE_ESP": str(machine.esp),
                                     "FIELDGATE_CMDLINE": str(machine.cmdline)})
            if code != 0 or machine.trial(booted):
                print(f"marking slot {booted} good failed (exit {code}): {output}", file=sys.stderr)
        if pending is not None:
            machine.record(status=SUCCEEDED, reason=f"system {version} runs from slot {booted}",
                           **{**common, "slot": booted})
            (machine.directory / PENDING).unlink(missing_ok=True)
        print(f"slot {booted} ({version}) is healthy")
        return 0
    failure = f"the gateway did not answer healthy within {deadline_s:g} s of the boot"
    if not trial:
        print(f"slot {booted}: {failure}", file=sys.stderr)
        return 1
    if pending is not None:
        machine.write(PENDING, {**pending, "failure": failure})
    print(f"slot {booted}: {failure}; rebooting into slot {_other(booted)}", file=sys.stderr)
    os.sync()
    _run(shlex.split(machine.reboot), timeout=60)
    return 1


def gateway_url(config_dir: Path) -> str:
    """The local address of the gateway's web app from its configuration (127.0.0.1:8080 when it cannot be read)."""
    from gateway.plugins import get_plugin_manager
    from gateway.protocols.registry import protocol_registry
    from gateway.resources.addresses import parse_listen
    from gateway.sinks.registry import endpoint_registry

    try:
        pm = get_plugin_manager()
        config = load_path(config_dir, protocol_registry(pm), endpoint_registry(pm))
        host, port = parse_listen(config.gateway.http.listen)
    except (FieldgateError, OSError) as exc:
        print(f"{config_dir}: {exc}; checking http://127.0.0.1:8080", file=sys.stderr)
        return "http://127.0.0.1:8080"
    return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("apply", "boot-check"),
                        help="apply: install the requested bundle and reboot (root); boot-check: record the booted "
                             "slot, settle a pending update and judge this boot")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--config", type=Path, default=Path("/etc/fieldgate"),
                        help="the gateway's configuration, for its address (boot-check)")
    parser.add_argument("--url", default="", help="the gateway's web address (default: from --config)")
    parser.add_argument("--deadline", default=f"{DEFAULT_HEALTH_DEADLINE:g}s",
                        help="how long the gateway may take to answer healthy on a boot that is not a trial")
    parser.add_argument("--esp", type=Path, default=DEFAULT_ESP, help=argparse.SUPPRESS)
    parser.add_argument("--cmdline", type=Path, default=Path("/proc/cmdline"), help=argparse.SUPPRESS)
    parser.add_argument("--bootloader", type=Path, default=DEFAULT_BOOTLOADER, help=argparse.SUPPRESS)
    parser.add_argument("--rauc", default="rauc", help=argparse.SUPPRESS)
    parser.add_argument("--rauc-status", type=Path, default=DEFAULT_RAUC_STATUS, help=argparse.SUPPRESS)
    parser.add_argument("--version-file", type=Path, default=DEFAULT_VERSION_FILE, help=argparse.SUPPRESS)
    parser.add_argument("--rauc-config", type=Path, default=DEFAULT_RAUC_CONFIG, help=argparse.SUPPRESS)
    parser.add_argument("--reboot-command", default=DEFAULT_REBOOT, help=argparse.SUPPRESS)


def _os_update(args: argparse.Namespace) -> int:
    if not args.data_dir.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: no such directory")
    try:
        deadline = float(Duration.parse(args.deadline))
    except ValueError as exc:
        raise ConfigError(f"--deadline: {exc}") from None
    machine = Machine(data_dir=args.data_dir, esp=args.esp, cmdline=args.cmdline, bootloader=args.bootloader,
                      rauc=args.rauc, rauc_status=args.rauc_status, version_file=args.version_file,
                      rauc_config=args.rauc_config, reboot=args.reboot_command)
    if args.action == "apply":
        return apply(machine)
    return boot_check(machine, args.url or gateway_url(args.config), deadline)


@hookimpl
def register_commands() -> list[Command]:
    return [Command("os-update", "the appliance's system updates: install a requested bundle into the other slot "
                    "(apply), judge a boot (boot-check); run by the image's units as root", _configure, _os_update)]
