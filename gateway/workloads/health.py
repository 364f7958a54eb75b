"""Health checks of instances: http (GET, 2xx/3xx), tcp (connect) or exec (exit 0), each with a timeout.

Where a check reaches the app is the instance's to say: an instance that has `exec_check` runs exec checks itself
(a container runs them inside, with `<engine> exec`), one that has `check_address` names the host and port that
http and tcp checks connect to (a container's published port or its own address). An instance without them (a
third-party runtime's that predates them) gets the defaults: the command runs on the host with the instance's
environment and working directory, and checks connect to 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Protocol, runtime_checkable

from gateway.resources.schema import HealthCheck

HOST = "127.0.0.1"


@runtime_checkable
class ExecChecks(Protocol):
    """An instance that runs exec checks where it runs."""

    async def exec_check(self, command: list[str]) -> str | None:
        """Run `command` where the instance runs: None when it exits 0, else why not; cancelled at the timeout."""


@runtime_checkable
class CheckAddresses(Protocol):
    """An instance that says where http and tcp checks reach it."""

    def check_address(self, port: int | str) -> tuple[str, int] | None:
        """(host, port) for the check's port (a number or a port name), or None when there is no such port."""


def check_port(check: HealthCheck, ports: dict[str, int]) -> int | None:
    """The port a check probes: a number as given, or the instance's host port of the named port."""
    if isinstance(check.port, int):
        return check.port
    if isinstance(check.port, str):
        return ports.get(check.port)
    return None


def check_address(check: HealthCheck, ports: dict[str, int], instance: object = None) -> tuple[str, int] | None:
    """The (host, port) an http or tcp check connects to, or None when the instance has no such port."""
    if isinstance(instance, CheckAddresses) and check.port is not None:
        return instance.check_address(check.port)
    port = check_port(check, ports)
    return None if port is None else (HOST, port)


async def probe(check: HealthCheck, ports: dict[str, int], env: dict[str, str], cwd: str | None,
                instance: object = None) -> str | None:
    """None when healthy, else why not; `instance` (the runtime's Instance) may run or address the check."""
    try:
        async with asyncio.timeout(float(check.timeout)):
            if check.type == "exec":
                if isinstance(instance, ExecChecks):
                    return await instance.exec_check(list(check.command))
                return await run_check_command(check.command, env, cwd)
            address = check_address(check, ports, instance)
            if address is None:
                return f"no port {check.port!r}"
            host, port = address
            if check.type == "tcp":
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return None
            return await _http(host, port, check.path)
    except TimeoutError:
        return f"{check.type} check timed out after {float(check.timeout):g}s"
    except OSError as exc:
        return f"{check.type} check: {exc.strerror or exc}"


async def _http(host: str, port: int, path: str) -> str | None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: fieldgate-health\r\n\r\n".encode())
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1").strip()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        return f"http check: not an HTTP answer: {status_line[:60]!r}"
    code = int(parts[1])
    return None if 200 <= code < 400 else f"http check: GET {path} answered {code}"


async def run_check_command(argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None
                            ) -> str | None:
    """Run `argv` on the host in its own process group: None when it exits 0, else why not. Cancelling it (the
    check's timeout) kills the group."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        _, stderr = await process.communicate()
    except asyncio.CancelledError:  # the timeout: the check's own process group goes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise
    if process.returncode == 0:
        return None
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] if stderr else []
    return f"exec check exited with {process.returncode}" + (f": {tail[0][:200]}" if tail else "")
