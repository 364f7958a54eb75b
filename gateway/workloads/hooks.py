"""Lifecycle hooks: `post_start` once an instance has started, `pre_stop` before it is stopped; `exec` runs a
command where the app runs (inside its container, with `<engine> exec`), `http` GETs a path of the app. Each ends as
an event with its outcome and the first OUTPUT_MAX bytes of its output."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Protocol, runtime_checkable

from gateway.resources.schema import HealthCheck, LifecycleHook
from gateway.workloads.health import check_address

OUTPUT_MAX = 2000  # bytes of a hook's output kept in its event
READ_MAX = 64 << 10  # bytes read of its output at most (the rest is drained unread)


@runtime_checkable
class ExecArgv(Protocol):
    """An instance that runs commands where it runs."""

    def exec_argv(self, command: list[str]) -> list[str]:
        """The host command line that runs `command` inside the instance."""


def _shown(output: bytes) -> str:
    text = output[:OUTPUT_MAX].decode(errors="replace").strip()
    return text + (" …" if len(output) > OUTPUT_MAX else "")


async def _exec(argv: list[str], env: dict[str, str] | None, cwd: str | None, user: int | None,
                group: int | None) -> tuple[bool, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, start_new_session=True, user=user, group=group)
    assert process.stdout is not None
    try:
        output = b""
        while chunk := await process.stdout.read(READ_MAX):
            if len(output) < READ_MAX:
                output += chunk[:READ_MAX - len(output)]
        code = await process.wait()
    except asyncio.CancelledError:  # the timeout: the hook's process group goes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        await process.wait()
        raise
    shown = _shown(output)
    return code == 0, f"exit code {code}" + (f": {shown}" if shown else "")


async def _http(host: str, port: int, path: str) -> tuple[bool, str]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: fieldgate-hook\r\n\r\n".encode())
        await writer.drain()
        answer = b""
        while len(answer) < READ_MAX and (chunk := await reader.read(READ_MAX - len(answer))):
            answer += chunk
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status.split()
    ok = len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
    shown = _shown(body)
    return ok, f"GET {path}: {status[:80] or 'no answer'}" + (f": {shown}" if shown else "")


async def run_hook(hook: LifecycleHook, instance: object, ports: dict[str, int], env: dict[str, str],
                   cwd: str | None, user: int | None = None, group: int | None = None) -> tuple[bool, str]:
    """(succeeded, what happened with its output) of one hook run, bounded by its timeout."""
    try:
        async with asyncio.timeout(float(hook.timeout)):
            if hook.type == "exec":
                if isinstance(instance, ExecArgv):
                    return await _exec(instance.exec_argv(list(hook.command)), None, None, None, None)
                return await _exec(list(hook.command), env, cwd, user, group)
            address = check_address(HealthCheck(type="http", port=hook.port), ports, instance)
            if address is None:
                return False, f"no port {hook.port!r}"
            return await _http(*address, hook.path)
    except TimeoutError:
        return False, f"timed out after {float(hook.timeout):g}s"
    except OSError as exc:
        return False, str(exc.strerror or exc)
