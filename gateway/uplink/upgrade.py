"""The node's half of batch upgrades (gateway.registry.upgrades is the other): the heartbeat answer names an upgrade
task; the node downloads its wheels over mutual TLS into `<data dir>/upgrade/task-<id>/` and starts `fieldgate upgrade
--from-wheels` (gateway.ops.upgrade) as a process of its own, since that flow restarts the gateway it was started
from. The slot root is `$FIELDGATE_UPGRADE_ROOT`, else the one this gateway runs from, else /opt/fieldgate; the
restart command is `$FIELDGATE_UPGRADE_RESTART`, else `systemctl restart fieldgate.service`. Whichever gateway process
runs reports the upgrade's status (gateway.ops.upgrade.StatusLog) with the reason and the tail of its log in every
heartbeat.

An OS task (kind `os`) brings one RAUC bundle instead: the node streams it to the task directory in the background
(heartbeats go on, reporting the download), checks its SHA-256 and asks the appliance's system updater for it
(gateway.ops.osupdate.request_update); that root service installs it, reboots and records the statuses in the same
StatusLog. A node that is not the appliance image (no A/B system slots) refuses the task as failed, with the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import httpx

from gateway.errors import FieldgateError
from gateway.ops import osupdate
from gateway.ops.upgrade import DEFAULT_RESTART, DEFAULT_ROOT, ROLLED_BACK, UPGRADING, StatusLog
from gateway.wire import WHEEL_FILE, UpgradeAssignment, WheelFile

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
LOG_LINES = 20
DOWNLOAD_TIMEOUT = 120.0  # each step of a download (connect, every read); a bundle may take much longer whole
DOWNLOAD_PIECE = 1 << 20
DOWNLOAD_TRIES = 3
RETRY_AFTER = 10.0  # seconds before the second try of a bundle's download, twice that before the third
UPDATER_TAKES_WITHIN = 600.0  # seconds the appliance's system updater (root) has to take a requested bundle
GATEWAY, OS = "gateway", "os"
NOT_THE_APPLIANCE = ("this node has no A/B system slots (not the fieldgate appliance image): an OS bundle cannot be "
                     "installed")


def slot_root() -> Path:
    """Where this node's A/B slots are: $FIELDGATE_UPGRADE_ROOT, the root this gateway runs from, /opt/fieldgate."""
    if os.environ.get("FIELDGATE_UPGRADE_ROOT"):
        return Path(os.environ["FIELDGATE_UPGRADE_ROOT"])
    running_from = Path(sys.prefix).parent
    return running_from if (running_from / "current").is_symlink() else DEFAULT_ROOT


class NodeUpgrade:
    """The node's half: start the upgrade the registry hands over, once, and report its status."""

    def __init__(self, gateway: GatewayAPI) -> None:
        self.gateway = gateway
        self.directory = gateway.data_dir / "upgrade"
        self.task_file = self.directory / "task.json"
        self._process: asyncio.subprocess.Process | None = None  # kept so that it is waited for when it ends
        self._fetching: asyncio.Task[None] | None = None  # an OS bundle's download, then the request for it
        self._received = 0  # bytes of the bundle downloaded so far

    def _task(self) -> dict[str, Any] | None:
        try:
            loaded: dict[str, Any] = json.loads(self.task_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return loaded

    def outgoing(self) -> dict[str, Any]:
        """The status of the last task handed to this node, for the heartbeat."""
        task = self._task()
        if task is None:
            return {}
        latest = StatusLog(self.gateway.data_dir).latest() or {}
        if latest.get("wheels") == task["wheels"]:
            status, reason = str(latest["status"]), str(latest.get("reason", ""))
        elif task.get("kind") == OS:
            status, reason = self._os_progress(task)
        else:
            status, reason = UPGRADING, "starting the upgrade"
        if status != UPGRADING:
            shutil.rmtree(task["wheels"], ignore_errors=True)  # done with them, whichever way it went
        try:
            lines = Path(task["log"]).read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_LINES:]
        except OSError:
            lines = []
        tail = "\n".join(lines)[-7000:]
        return {"upgrade": {"task": task["task"], "status": status, "reason": reason[:2000], "log": tail}}

    def _os_progress(self, task: dict[str, Any]) -> tuple[str, str]:
        """An OS task's status before the system updater records one."""
        if self._fetching is not None and not self._fetching.done():
            return UPGRADING, (f"downloading the OS bundle: {self._received / 2**20:.1f} of "
                               f"{task.get('size', 0) / 2**20:.1f} MiB")
        if task.get("requested_at"):
            request = osupdate.directory(self.gateway.data_dir) / osupdate.REQUEST
            if not request.exists() or time.time() - float(task["requested_at"]) < UPDATER_TAKES_WITHIN:
                return UPGRADING, "the OS bundle is downloaded and handed to the system updater"
            request.unlink(missing_ok=True)  # so that it does not start an update nobody waits for any more
            reason = (f"the system updater did not take the request within {UPDATER_TAKES_WITHIN / 60:.0f} minutes "
                      "(is fieldgate-os-update.path enabled?); nothing was installed")
        else:
            reason = "the download of the OS bundle was interrupted (the gateway stopped); nothing was installed"
        StatusLog(self.gateway.data_dir).record(status=ROLLED_BACK, reason=reason, wheels=task["wheels"])
        return ROLLED_BACK, reason

    async def start(self, client: httpx.AsyncClient, assignment: UpgradeAssignment) -> None:
        """Download the wheels and start the upgrade process (or, for an OS task, start downloading the bundle),
        unless this task was started already."""
        task = self._task()
        if task is not None and task["task"] == assignment.task:
            return
        if self._fetching is not None:  # an earlier task's bundle download: that task is no longer this node's
            self._fetching.cancel()
            self._fetching = None
        try:
            if assignment.kind == OS:
                self._start_os(client, assignment)
            elif assignment.kind == GATEWAY:
                await self._start(client, assignment)
            else:
                self._refuse(assignment, f"an upgrade of kind {assignment.kind!r}, which this version of fieldgate "
                                         "does not know")
        except (httpx.HTTPError, OSError, FieldgateError) as exc:  # tried again with the next heartbeat
            log.warning("upgrade %s to version %s not started: %s", assignment.task, assignment.version, exc)

    def _task_directory(self, task: str) -> Path:
        """A new, empty directory for a task's files; the ones of earlier tasks are removed."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob("task-*"):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        directory = self.directory / f"task-{task}"
        directory.mkdir()
        return directory

    def _write_task(self, record: dict[str, Any]) -> None:
        staged = self.task_file.with_suffix(".tmp")
        staged.write_text(json.dumps(record), encoding="utf-8")
        staged.replace(self.task_file)

    def _refuse(self, assignment: UpgradeAssignment, reason: str) -> None:
        """Record a task this node cannot run as failed, for the heartbeat to report."""
        directory = str(self._task_directory(assignment.task).resolve())
        self._write_task({"task": assignment.task, "version": assignment.version, "kind": assignment.kind,
                          "wheels": directory, "log": str(self.directory / f"task-{assignment.task}.log"),
                          "started_at": time.time()})
        StatusLog(self.gateway.data_dir).record(status=ROLLED_BACK, reason=reason, wheels=directory)
        log.warning("upgrade %s to version %s refused: %s", assignment.task, assignment.version, reason)

    def _start_os(self, client: httpx.AsyncClient, assignment: UpgradeAssignment) -> None:
        names = [wheel.name for wheel in assignment.wheels]
        if len(names) != 1 or not osupdate.BUNDLE_FILE.match(names[0]):
            raise FieldgateError(f"the registry named an OS bundle {names!r}: expected one NAME.raucb")
        bundle = assignment.wheels[0]
        if not 0 < bundle.size <= osupdate.MAX_BUNDLE_BYTES:
            raise FieldgateError(f"OS bundle {bundle.name}: {bundle.size} bytes, expected 1 to "
                                 f"{osupdate.MAX_BUNDLE_BYTES}")
        if osupdate.system_state(self.gateway.data_dir) is None:  # refused before a byte is downloaded
            self._refuse(assignment, NOT_THE_APPLIANCE)
            return
        directory = self._task_directory(assignment.task)
        output = self.directory / f"task-{assignment.task}.log"
        for old_log in self.directory.glob("task-*.log"):
            if old_log != output:
                old_log.unlink(missing_ok=True)
        record = {"task": assignment.task, "version": assignment.version, "kind": OS,
                  "wheels": str(directory.resolve()), "log": str(output), "bundle": bundle.name, "size": bundle.size,
                  "started_at": time.time(), "requested_at": None}
        self._write_task(record)
        self._received = 0
        self._fetching = asyncio.create_task(self._fetch_bundle(client, assignment, bundle, record),
                                             name=f"upgrade {assignment.task}: OS bundle")

    async def _fetch_bundle(self, client: httpx.AsyncClient, assignment: UpgradeAssignment, bundle: WheelFile,
                            record: dict[str, Any]) -> None:
        """Download the bundle (a few tries), then ask the system updater for it; a failure is recorded as the
        task's status."""
        directory = Path(record["wheels"])
        output = Path(record["log"])
        try:
            for attempt in range(1, DOWNLOAD_TRIES + 1):
                _say(output, f"downloading the OS bundle {bundle.name} ({bundle.size} bytes), try {attempt}")
                try:
                    path = await self._download(client, assignment.task, bundle, directory)
                    break
                except (httpx.HTTPError, OSError, FieldgateError) as exc:
                    _say(output, f"the download failed: {exc}")
                    if attempt == DOWNLOAD_TRIES:
                        raise FieldgateError(f"the OS bundle was not downloaded ({attempt} tries): {exc}") from exc
                    log.warning("upgrade %s: the OS bundle's download failed (%s); trying again", assignment.task,
                                exc)
                    await asyncio.sleep(RETRY_AFTER * attempt)
            requested = osupdate.request_update(self.gateway.data_dir, task=assignment.task,
                                                version=assignment.version, bundle=path, deadline=assignment.deadline)
            self._write_task({**record, "requested_at": time.time()})
            _say(output, f"the bundle's SHA-256 is the registry's; asked the system updater for it ({requested})")
            log.info("upgrade %s to system version %s: the OS bundle is downloaded and requested", assignment.task,
                     assignment.version)
        except Exception as exc:  # recorded whatever it was: the registry must learn that the node failed
            if not isinstance(exc, (OSError, FieldgateError)):
                log.exception("upgrade %s: the OS bundle's download or request failed", assignment.task)
            reason = str(exc) if isinstance(exc, FieldgateError) else f"the OS bundle was not requested: {exc}"
            StatusLog(self.gateway.data_dir).record(status=ROLLED_BACK, reason=reason, wheels=record["wheels"])
            log.warning("upgrade %s to system version %s failed: %s", assignment.task, assignment.version, reason)

    async def _download(self, client: httpx.AsyncClient, task: str, bundle: WheelFile, directory: Path) -> Path:
        """Stream the bundle to disk, hashing it on the way, no more than its size; its path once the SHA-256 is the
        registry's."""
        target = directory / bundle.name
        staged = directory / f"{bundle.name}.part"
        digest = hashlib.sha256()
        self._received = 0
        async with client.stream("GET", f"/api/v1/upgrades/{task}/wheels/{bundle.name}",
                                 timeout=DOWNLOAD_TIMEOUT) as response:
            response.raise_for_status()
            with staged.open("wb") as out:
                async for piece in response.aiter_bytes(DOWNLOAD_PIECE):
                    if self._received + len(piece) > bundle.size:
                        raise FieldgateError(f"OS bundle {bundle.name}: the registry sent more than its "
                                             f"{bundle.size} bytes")
                    await asyncio.to_thread(_write_hashed, out, digest, piece)
                    self._received += len(piece)
                await asyncio.to_thread(os.fsync, out.fileno())
        if self._received != bundle.size:
            raise FieldgateError(f"OS bundle {bundle.name}: {self._received} bytes of {bundle.size} arrived")
        if digest.hexdigest() != bundle.sha256:
            raise FieldgateError(f"OS bundle {bundle.name}: checksum differs from the registry's")
        staged.replace(target)
        return target

    async def _start(self, client: httpx.AsyncClient, assignment: UpgradeAssignment) -> None:
        wheels = self._task_directory(assignment.task)
        for wheel in assignment.wheels:
            if not WHEEL_FILE.match(wheel.name):
                raise FieldgateError(f"the registry named a wheel {wheel.name!r}")
            response = await client.get(f"/api/v1/upgrades/{assignment.task}/wheels/{wheel.name}",
                                        timeout=DOWNLOAD_TIMEOUT)
            response.raise_for_status()
            if hashlib.sha256(response.content).hexdigest() != wheel.sha256:
                raise FieldgateError(f"wheel {wheel.name}: checksum differs from the registry's")
            (wheels / wheel.name).write_bytes(response.content)
        output = self.directory / f"task-{assignment.task}.log"
        record = {"task": assignment.task, "version": assignment.version, "wheels": str(wheels.resolve()),
                  "log": str(output), "started_at": time.time()}
        self._write_task(record)
        command = [sys.executable, "-m", "gateway", "upgrade", "--from-wheels", str(wheels.resolve()), "--root",
                   str(slot_root()), "--data-dir", str(self.gateway.data_dir), "--url", self._local_url(),
                   "--deadline", f"{assignment.deadline:g}s", "--restart-command",
                   os.environ.get("FIELDGATE_UPGRADE_RESTART") or DEFAULT_RESTART]
        for old_log in self.directory.glob("task-*.log"):
            if old_log != output:
                old_log.unlink(missing_ok=True)
        with output.open("ab") as out:
            # a session of its own: the restart it makes ends this gateway process, not the upgrade
            self._process = await asyncio.create_subprocess_exec(
                *command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd="/",
                start_new_session=True)
        log.info("upgrade %s to version %s started from the registry", assignment.task, assignment.version)

    def _local_url(self) -> str:
        from gateway.resources.addresses import parse_listen

        host, port = parse_listen(self.gateway.config.gateway.http.listen)
        return f"http://{'127.0.0.1' if host in ('', '0.0.0.0', '::') else host}:{port}"


def _write_hashed(out: BinaryIO, digest: Any, piece: bytes) -> None:
    digest.update(piece)
    out.write(piece)


def _say(output: Path, line: str) -> None:
    """A line of an OS task's log (its tail goes with the heartbeat)."""
    with output.open("a", encoding="utf-8") as log_file:
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
