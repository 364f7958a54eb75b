"""The node's half of batch upgrades (gateway.registry.upgrades is the other): the heartbeat answer names an upgrade
task; the node downloads its wheels over mutual TLS into `<data dir>/upgrade/task-<id>/` and starts `fieldgate upgrade
--from-wheels` (gateway.ops.upgrade) as a process of its own, since that flow restarts the gateway it was started
from. The slot root is `$FIELDGATE_UPGRADE_ROOT`, else the one this gateway runs from, else /opt/fieldgate; the
restart command is `$FIELDGATE_UPGRADE_RESTART`, else `systemctl restart fieldgate.service`. Whichever gateway process
runs reports the upgrade's status (gateway.ops.upgrade.StatusLog) with the reason and the tail of its log in every
heartbeat."""

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
from typing import TYPE_CHECKING, Any

import httpx

from gateway.errors import FieldgateError
from gateway.ops.upgrade import DEFAULT_RESTART, DEFAULT_ROOT, UPGRADING, StatusLog
from gateway.wire import WHEEL_FILE, UpgradeAssignment

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)
LOG_LINES = 20
DOWNLOAD_TIMEOUT = 120.0


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

    async def start(self, client: httpx.AsyncClient, assignment: UpgradeAssignment) -> None:
        """Download the wheels and start the upgrade process, unless this task was started already."""
        task = self._task()
        if task is not None and task["task"] == assignment.task:
            return
        try:
            await self._start(client, assignment)
        except (httpx.HTTPError, OSError, FieldgateError) as exc:  # tried again with the next heartbeat
            log.warning("upgrade %s to version %s not started: %s", assignment.task, assignment.version, exc)

    async def _start(self, client: httpx.AsyncClient, assignment: UpgradeAssignment) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob("task-*"):
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
        wheels = self.directory / f"task-{assignment.task}"
        wheels.mkdir()
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
        staged = self.task_file.with_suffix(".tmp")
        staged.write_text(json.dumps(record), encoding="utf-8")
        staged.replace(self.task_file)
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
