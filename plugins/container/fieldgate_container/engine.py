"""The container engine's command line: podman, or docker where podman is absent; every call has a timeout."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import WorkloadError

ENGINES = ("podman", "docker")
ENGINE_VARIABLE = "FIELDGATE_CONTAINER_ENGINE"  # a command name or path instead of podman/docker
CALL_TIMEOUT = 30.0
PULL_TIMEOUT = 300.0


def find_engine() -> Path | None:
    """The engine's executable: $FIELDGATE_CONTAINER_ENGINE when set, else podman, else docker on PATH."""
    override = os.environ.get(ENGINE_VARIABLE)
    for name in (override,) if override else ENGINES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def wanted() -> str:
    override = os.environ.get(ENGINE_VARIABLE)
    return f"{ENGINE_VARIABLE}={override} is not an executable" if override else "neither podman nor docker is on PATH"


def last_line(text: bytes) -> str:
    lines = [line.strip() for line in text.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Engine:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def is_podman(self) -> bool:
        return "podman" in self.name

    async def call(self, *args: str, timeout: float = CALL_TIMEOUT, check: bool = True,
                   env: dict[str, str] | None = None) -> Result:
        """Run `<engine> args…` (with `env` as its environment when given); raise WorkloadError (with the engine's
        own message) when it fails or times out."""
        try:
            process = await asyncio.create_subprocess_exec(
                str(self.path), *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env)
        except OSError as exc:
            raise WorkloadError(f"cannot run {self.path}: {exc.strerror or exc}") from exc
        try:
            async with asyncio.timeout(timeout):
                out, err = await process.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise WorkloadError(f"{self.name} {args[0]} timed out after {timeout:g}s") from None
        code = process.returncode or 0
        if check and code != 0:
            raise WorkloadError(f"{self.name} {args[0]}: {last_line(err) or f'exit code {code}'}")
        return Result(code, out.decode(errors="replace"), err.decode(errors="replace"))

    async def step(self, *args: str, env: dict[str, str] | None = None) -> Result:
        """A step of running a container (`create`, `init`): WorkloadError `<engine> <verb> failed: <its message>`."""
        done = await self.call(*args, env=env, check=False)
        if done.code != 0:
            message = last_line(done.err.encode()).removeprefix("Error: ") or f"exit code {done.code}"
            raise WorkloadError(f"{self.name} {args[0]} failed: {message}")
        return done

    def call_sync(self, *args: str, timeout: float = CALL_TIMEOUT) -> Result:
        """The same, blocking: for the runtime's start-up only."""
        try:
            done = subprocess.run([str(self.path), *args], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            raise WorkloadError(f"{self.name} {args[0]}: {exc}") from exc
        if done.returncode != 0:
            raise WorkloadError(f"{self.name} {args[0]}: {last_line(done.stderr) or f'exit code {done.returncode}'}")
        return Result(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace"))

    def remove_args(self, *names: str) -> list[str]:
        """Force-remove containers at once (podman would first wait their stop timeout)."""
        return ["rm", "-f", *(["-t", "0"] if self.is_podman else []), *names]

    async def image_missing(self, image: str) -> str | None:
        """None when `image` is on the node, else the engine's word on it (`…: image not known`)."""
        found = await self.call("image", "inspect", "--format", "{{.Id}}", image, check=False)
        if found.code == 0:
            return None
        return last_line(found.err.encode()).removeprefix("Error: ") or f"exit code {found.code}"

    async def pull(self, image: str) -> None:
        try:
            await self.call("pull", "-q", image, timeout=PULL_TIMEOUT)
        except WorkloadError as exc:
            raise WorkloadError(f"cannot pull image {image!r}: {exc}") from exc
