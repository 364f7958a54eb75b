"""`fieldgate upgrade --from-wheels DIR`: an A/B upgrade of one node with an automatic rollback (a built-in plugin).

The node keeps two slots, `<root>/a` and `<root>/b`, each a venv, and `<root>/current`, a symlink to the active
one. An upgrade installs the wheels into the inactive slot (pip, offline), switches `current`, restarts the
gateway and waits until the new version answers healthy and has polled its devices. When it does not within the
deadline, `current` goes back to the old slot and the old version is restarted and checked the same way. Every
step is recorded in `<data dir>/upgrade/status.json` (the last one) and `history.jsonl`: `upgrading`,
`succeeded`, `failed-rolled-back` or `failed-rollback-failed`, with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.commands import Command
from gateway.errors import ConfigError, FieldgateError
from gateway.hookspecs import hookimpl
from gateway.resources.durations import Duration

SLOTS = ("a", "b")
CURRENT = "current"
DEFAULT_ROOT = Path("/opt/fieldgate")
DEFAULT_DATA_DIR = Path("/var/lib/fieldgate")
DEFAULT_RESTART = "systemctl restart fieldgate.service"
INSTALL_TIMEOUT = 900.0
WHEEL_NAME = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")
UPGRADING, SUCCEEDED = "upgrading", "succeeded"
ROLLED_BACK, ROLLBACK_FAILED = "failed-rolled-back", "failed-rollback-failed"


class UpgradeFailed(FieldgateError):
    """A step of the upgrade failed; the message is the reason recorded in the status."""


@dataclass(frozen=True)
class Slots:
    root: Path
    active: str
    inactive: str

    def path(self, slot: str) -> Path:
        return self.root / slot


def read_slots(root: Path) -> Slots:
    """The active and the inactive slot from `<root>/current`."""
    current = root / CURRENT
    if not current.is_symlink():
        raise ConfigError(f"{current}: not a symlink to a slot ({' or '.join(SLOTS)}); is {root} a slot root?")
    active = Path(os.readlink(current)).name
    if active not in SLOTS:
        raise ConfigError(f"{current}: points at {os.readlink(current)!r}, expected one of {', '.join(SLOTS)}")
    return Slots(root, active, SLOTS[1 - SLOTS.index(active)])


def read_wheelhouse(directory: Path) -> dict[str, str]:
    """The fieldgate distributions in a wheel directory, name → version; each must be there in one version."""
    if not directory.is_dir():
        raise ConfigError(f"--from-wheels {directory}: no such directory")
    found: dict[str, set[str]] = {}
    for wheel in directory.glob("*.whl"):
        match = WHEEL_NAME.match(wheel.name)
        name = match["name"].lower().replace("_", "-").replace(".", "-") if match else ""
        if match and (name == "fieldgate" or name.startswith("fieldgate-")):
            found.setdefault(name, set()).add(match["version"])
    if "fieldgate" not in found:
        raise ConfigError(f"--from-wheels {directory}: no fieldgate wheel in it")
    several = sorted(f"{name} ({', '.join(sorted(versions))})" for name, versions in found.items()
                     if len(versions) > 1)
    if several:
        raise ConfigError(f"--from-wheels {directory}: holds several versions of {'; '.join(several)}")
    return {name: versions.pop() for name, versions in found.items()}


def slot_version(slot: Path, timeout: float = 60.0) -> str:
    """The fieldgate version installed in a slot, or '' when there is none."""
    python = slot / "bin" / "python"
    if not python.exists():
        return ""
    result = subprocess.run([str(python), "-I", "-c", "import gateway; print(gateway.__version__)"],
                            capture_output=True, text=True, timeout=timeout, check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def install(slot: Path, wheels: Path, pins: dict[str, str]) -> None:
    """Install exactly the pinned versions into a slot (making its venv when missing), offline."""
    python = slot / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(slot)], f"creating the venv {slot}", timeout=300.0)
    requirements = [f"{name}=={version}" for name, version in sorted(pins.items())]
    _run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-input", "--no-index",
          "--find-links", str(wheels), *requirements], f"pip install into {slot}", timeout=INSTALL_TIMEOUT)


def _run(command: list[str], what: str, *, timeout: float) -> None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise UpgradeFailed(f"{what}: no result within {timeout:g} s") from None
    except OSError as exc:
        raise UpgradeFailed(f"{what}: {exc}") from None
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        reason = next((line for line in reversed(lines) if "ERROR" in line), lines[-1] if lines else "")
        raise UpgradeFailed(f"{what} failed (exit {result.returncode}): {reason.strip()}")


def switch(slots: Slots, slot: str) -> None:
    """Point `current` at a slot in one rename, so a crash leaves either the old or the new link."""
    link = slots.root / CURRENT
    staged = slots.root / f".{CURRENT}.new"
    staged.unlink(missing_ok=True)
    staged.symlink_to(slot)
    staged.replace(link)


def command_restart(command: str, timeout: float) -> Callable[[], None]:
    """The restart action: run a command (on the appliance `systemctl restart fieldgate.service`)."""
    argv = shlex.split(command)
    if not argv:
        raise ConfigError("--restart-command: empty")

    def restart() -> None:
        _run(argv, f"restart ({command})", timeout=timeout)

    return restart


class HealthGate:
    """Waits until the gateway at `url` reports a version as running and has polled its devices."""

    def __init__(self, url: str, data_dir: Path, *, interval: float = 1.0) -> None:
        self.url = url.rstrip("/")
        self.data_dir = data_dir
        self.interval = interval
        self.token = ""

    @contextlib.contextmanager
    def credentials(self) -> Iterator[None]:
        """A viewer token made in the node's store for the checks, deleted afterwards."""
        from gateway.store import Store
        from gateway.web.auth import create_token, hash_token

        async def make() -> str:
            store = Store(self.data_dir)
            await store.open()
            try:
                return await create_token(store, "viewer", "upgrade health check")
            finally:
                await store.close()

        async def delete(token: str) -> None:
            store = Store(self.data_dir)
            await store.open()
            try:
                await store.users.delete_token(hash_token(token))
            finally:
                await store.close()

        self.token = asyncio.run(make())
        self._keep_owner()
        try:
            yield
        finally:
            asyncio.run(delete(self.token))
            self._keep_owner()
            self.token = ""

    def _keep_owner(self) -> None:
        """Run as root, opening the store may create its -wal/-shm files: give them to the data dir's owner."""
        if os.geteuid() != 0:
            return
        owner = self.data_dir.stat()
        for path in self.data_dir.glob("fieldgate.db*"):
            if path.stat().st_uid != owner.st_uid:
                os.chown(path, owner.st_uid, owner.st_gid)

    def wait(self, version: str, deadline: float) -> None:
        """Return once healthy; raise UpgradeFailed with the last thing seen when `deadline` (monotonic) passes."""
        import httpx  # only an upgrade needs an HTTP client (httpx and what it loads: ~10 MB in every gateway)

        last = "no answer"
        with httpx.Client(timeout=5.0, headers={"Authorization": f"Bearer {self.token}"}) as client:
            while True:
                try:
                    response = client.get(f"{self.url}/api/v1/status")
                    if response.status_code == 200:
                        status = response.json()
                        last = self._judge(status, version)
                        if not last:
                            return
                    else:
                        last = f"GET /api/v1/status answered {response.status_code}"
                except (httpx.HTTPError, ValueError) as exc:
                    last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                if time.monotonic() + self.interval > deadline:
                    raise UpgradeFailed(f"version {version} not healthy within the deadline: {last}")
                time.sleep(self.interval)

    @staticmethod
    def _judge(status: dict[str, Any], version: str) -> str:
        """'' when healthy, else what is still missing."""
        if status.get("version") != version:
            return f"version {status.get('version')} answers, expected {version}"
        devices = status.get("devices", {})
        total = int(devices.get("total", 0))
        if int(status.get("cycles", 0)) < total:
            return f"{status.get('cycles', 0)} poll cycles done for {total} devices"
        return ""


class StatusLog:
    """The upgrade's state in `<data dir>/upgrade/`: status.json (the latest) and history.jsonl (every step)."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "upgrade"

    def record(self, **fields: Any) -> dict[str, Any]:
        self.directory.mkdir(parents=True, exist_ok=True)
        entry = {"at": round(time.time(), 3), **fields}
        staged = self.directory / "status.json.tmp"
        staged.write_text(json.dumps(entry, indent=2) + "\n", encoding="utf-8")
        staged.replace(self.directory / "status.json")
        with (self.directory / "history.jsonl").open("a", encoding="utf-8") as history:
            history.write(json.dumps(entry) + "\n")
        return entry

    def latest(self) -> dict[str, Any] | None:
        try:
            loaded: dict[str, Any] = json.loads((self.directory / "status.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return loaded


@contextlib.contextmanager
def upgrade_lock(root: Path) -> Iterator[None]:
    with (root / ".upgrade.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{root}: another upgrade is running") from None
        yield


@dataclass
class Upgrade:
    """One upgrade of the slots under `root` to the wheels in `wheels`."""

    root: Path
    wheels: Path
    data_dir: Path
    restart: Callable[[], None]
    health: HealthGate
    deadline: float
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)

    def run(self) -> dict[str, Any]:
        pins = read_wheelhouse(self.wheels)
        slots = read_slots(self.root)
        log = StatusLog(self.data_dir)
        with upgrade_lock(self.root):
            old_version = slot_version(slots.path(slots.active))
            new_version = pins["fieldgate"]
            common = {"from": {"slot": slots.active, "version": old_version},
                      "to": {"slot": slots.inactive, "version": new_version}, "wheels": str(self.wheels)}
            log.record(status=UPGRADING, **common)
            self.say(f"upgrade {old_version or '?'} -> {new_version}: installing into slot {slots.inactive}")
            try:
                install(slots.path(slots.inactive), self.wheels, pins)
                installed = slot_version(slots.path(slots.inactive))
                if installed != new_version:
                    raise UpgradeFailed(f"slot {slots.inactive} reports version {installed or 'none'} after the "
                                        f"install, expected {new_version}")
            except UpgradeFailed as exc:
                return log.record(status=ROLLED_BACK, reason=str(exc), **common)  # nothing was switched
            with self.health.credentials():
                self.say(f"switching to slot {slots.inactive} and restarting")
                try:
                    self._activate(slots, slots.inactive, new_version)
                except UpgradeFailed as exc:
                    reason = str(exc)
                    self.say(f"{reason}; rolling back to slot {slots.active}")
                    try:
                        self._activate(slots, slots.active, old_version)
                    except UpgradeFailed as again:
                        return log.record(status=ROLLBACK_FAILED, reason=f"{reason}; rollback: {again}", **common)
                    return log.record(status=ROLLED_BACK, reason=reason, **common)
            return log.record(status=SUCCEEDED, **common)

    def _activate(self, slots: Slots, slot: str, version: str) -> None:
        deadline = time.monotonic() + self.deadline
        switch(slots, slot)
        self.restart()
        self.health.wait(version, deadline)


# --- the command -----------------------------------------------------------------------------------------------


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from-wheels", required=True, type=Path, metavar="DIR",
                        help="a directory of wheels: fieldgate, its plugins and their dependencies")
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT,
                        help=f"where the slots a, b and the `current` link are (default {DEFAULT_ROOT})")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help=f"the gateway's data dir; the status goes to <data-dir>/upgrade (default "
                             f"{DEFAULT_DATA_DIR})")
    parser.add_argument("--deadline", default="120s",
                        help="how long the new version has to restart, answer healthy and poll its devices")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's web address, for the checks")
    parser.add_argument("--restart-command", default=DEFAULT_RESTART,
                        help=f"how to restart the gateway (default: {DEFAULT_RESTART})")


def _upgrade(args: argparse.Namespace) -> int:
    try:
        deadline = float(Duration.parse(args.deadline))
    except ValueError as exc:
        raise ConfigError(f"--deadline: {exc}") from None
    if not args.data_dir.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: no such directory")
    upgrade = Upgrade(root=args.root, wheels=args.from_wheels.resolve(), data_dir=args.data_dir,
                      restart=command_restart(args.restart_command, deadline), health=HealthGate(args.url,
                      args.data_dir), deadline=deadline)
    result = upgrade.run()
    if result["status"] == SUCCEEDED:
        print(f"upgrade succeeded: version {result['to']['version']} runs from slot {result['to']['slot']}")
        return 0
    print(f"upgrade {result['status']}: {result['reason']}", file=sys.stderr)
    return 1


@hookimpl
def register_commands() -> list[Command]:
    return [Command("upgrade", "install wheels into the inactive slot, switch, health-check, roll back on failure",
                    _configure, _upgrade)]
