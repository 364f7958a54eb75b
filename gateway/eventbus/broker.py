"""The embedded broker: a mosquitto child process, supervised by the gateway and ended with it.

mosquitto rather than a Python broker in the loop: it relays as fast as anything measured here, costs a few MB,
is the broker the appliance runs anyway, and keeps the gateway's loop free for polling.

The broker never outlives the gateway: on Linux the kernel sends it SIGTERM when the gateway dies, even by
`kill -9`, and a broker that an earlier gateway left behind anyway (another OS, a kill at the wrong instant) is
found at start by its pid file and stopped, when /proc shows that it is a mosquitto run with this data dir's
configuration, and only then.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from gateway.errors import ConfigError
from gateway.eventbus.access import BrokerAccess, Credentials, find_mosquitto_passwd, write_password_file, write_private

log = logging.getLogger(__name__)
BROKER_DIR = "broker"  # in the data dir: the broker's configuration, users, rules, pid and the gateway's login
PR_SET_PDEATHSIG = 1
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


def die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the kernel send the child SIGTERM when the thread that forked it ends (Linux).

    The gateway forks from its event loop's thread, which lives as long as the gateway; the child checks its parent
    afterwards, since a parent that died before the prctl call would never signal it.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child only calls it
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def tie_to_parent() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return tie_to_parent


def command_line(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def exited(pid: int) -> bool:
    """No such process, or only its zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


class EmbeddedBroker:
    """Runs mosquitto on `host:port` with the users and rules `access()` gives; `ready` is set while it serves."""

    def __init__(self, data_dir: Path, host: str, port: int, access: Callable[[], BrokerAccess],
                 credentials: Credentials) -> None:
        self.directory = data_dir.resolve() / BROKER_DIR
        self.host = host
        self.port = port
        self.access = access
        self.credentials = credentials
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self._applied: BrokerAccess | None = None

    @property
    def conf_path(self) -> Path:
        return self.directory / "mosquitto.conf"

    @property
    def pid_path(self) -> Path:
        return self.directory / "mosquitto.pid"

    def config_text(self, access: BrokerAccess) -> str:
        lines = [f"listener {self.port} {self.host}", f"allow_anonymous {str(access.allow_anonymous).lower()}",
                 f"password_file {self.directory / 'passwd'}"]
        if access.acl is not None:
            lines.append(f"acl_file {self.directory / 'acl'}")
        if os.geteuid() == 0:
            # mosquitto started as root switches to the mosquitto user, and the kernel forgets the parent-death
            # signal on that switch: the broker keeps the gateway's user (run fieldgate as its own user).
            lines.append("user root")
        lines += ["persistence false", "log_dest stderr", "log_type error", "log_type warning"]
        return "\n".join(lines) + "\n"

    async def _write_files(self, access: BrokerAccess) -> None:
        await write_password_file(self.directory / "passwd", access.passwords, tool=find_mosquitto_passwd())
        if access.acl is not None:
            write_private(self.directory / "acl", access.acl + "\n")
        write_private(self.conf_path, self.config_text(access))
        self._applied = access

    async def run(self) -> None:
        """Run mosquitto until cancelled; a broker that exits raises, so the supervisor restarts it."""
        binary = find_mosquitto()
        if binary is None:
            raise ConfigError("eventbus url `embedded` needs the mosquitto binary (apt-get install mosquitto), "
                              "or set eventbus.url to an existing broker or `none`")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self.stop_stale()
        self.credentials.write(self.directory / "gateway.json")
        await self._write_files(self.access())
        self._check_port_free()
        self.process = await asyncio.create_subprocess_exec(
            binary, "-c", str(self.conf_path), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent())
        self.pid_path.write_text(f"{self.process.pid}\n", encoding="utf-8")
        log.info("embedded broker (mosquitto, pid %d) on %s:%d", self.process.pid, self.host, self.port)
        tail: collections.deque[str] = collections.deque(maxlen=20)
        reader = asyncio.create_task(self._read_stderr(tail))
        try:
            await self._wait_serving()
            await reader
            code = await self.process.wait()
            raise ConfigError(f"embedded broker exited with {code}: {' / '.join(tail)}")
        finally:
            self.ready.clear()
            reader.cancel()
            await self.stop()

    async def _read_stderr(self, tail: collections.deque[str]) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in self.process.stderr:
            tail.append(line.decode(errors="replace").strip())

    async def _wait_serving(self) -> None:
        """Set `ready` once the new broker accepts connections (the port was free before it started)."""
        process = self.process
        assert process is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        while process.returncode is None and loop.time() < deadline:
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(1):
                    _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                self.ready.set()
                return
            await asyncio.sleep(0.05)

    def _check_port_free(self) -> None:
        """Refuse to start beside another program on the port, so the gateway never talks to a broker not its own."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto binds
            try:
                probe.bind((self.host, self.port))
            except OSError as exc:
                raise ConfigError(f"embedded broker: {self.host}:{self.port} is taken by another program ({exc}); "
                                  "stop it or change eventbus.embedded_listen") from None

    def _is_ours(self, pid: int) -> bool:
        argv = command_line(pid)
        return len(argv) >= 3 and Path(argv[0]).name == "mosquitto" and argv[1:3] == ["-c", str(self.conf_path)]

    async def stop_stale(self) -> None:
        """Stop the broker an earlier gateway on this data dir left running; never a process that is not one."""
        try:
            pid = int(self.pid_path.read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return
        if pid > 0 and pid != os.getpid() and self._is_ours(pid):
            log.warning("stopping the embedded broker (pid %d) that an earlier run of the gateway left running", pid)
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                for _ in range(int(STOP_TIMEOUT / 0.05)):
                    if exited(pid):
                        break
                    await asyncio.sleep(0.05)
                if exited(pid):
                    break
        self.pid_path.unlink(missing_ok=True)

    async def reconfigure(self) -> None:
        """Apply changed users, passwords or rules to the running broker (SIGHUP re-reads them)."""
        access = self.access()
        process = self.process
        if access == self._applied or process is None or process.returncode is not None:
            return
        await self._write_files(access)
        process.send_signal(signal.SIGHUP)
        log.info("embedded broker: users and rules reloaded")

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.pid_path.unlink(missing_ok=True)
