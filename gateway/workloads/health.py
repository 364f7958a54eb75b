"""Health checks of instances: http (GET, 2xx/3xx), tcp (connect) or exec (exit 0), each with a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os

from gateway.resources.schema import HealthCheck

HOST = "127.0.0.1"


def check_port(check: HealthCheck, ports: dict[str, int]) -> int | None:
    """The port a check probes: a number as given, or the instance's host port of the named port."""
    if isinstance(check.port, int):
        return check.port
    if isinstance(check.port, str):
        return ports.get(check.port)
    return None


async def probe(check: HealthCheck, ports: dict[str, int], env: dict[str, str], cwd: str | None) -> str | None:
    """None when healthy, else why not."""
    try:
        async with asyncio.timeout(float(check.timeout)):
            if check.type == "exec":
                return await _exec(check.command, env, cwd)
            port = check_port(check, ports)
            if port is None:
                return f"no port {check.port!r}"
            if check.type == "tcp":
                _, writer = await asyncio.open_connection(HOST, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                return None
            return await _http(port, check.path)
    except TimeoutError:
        return f"{check.type} check timed out after {float(check.timeout):g}s"
    except OSError as exc:
        return f"{check.type} check: {exc.strerror or exc}"


async def _http(port: int, path: str) -> str | None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {HOST}:{port}\r\nUser-Agent: fieldgate-health\r\n\r\n".encode())
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


async def _exec(command: list[str], env: dict[str, str], cwd: str | None) -> str | None:
    process = await asyncio.create_subprocess_exec(
        *command, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
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
