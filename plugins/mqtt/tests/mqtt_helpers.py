"""The test's devices: mosquitto's own command-line clients, run as subprocesses against a loopback broker."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


async def publish(port: int, topic: str, payload: str | bytes, *, retain: bool = False, qos: int = 1,
                  user: tuple[str, str] | None = None, tls: list[str] | None = None) -> None:
    """Publish one message with mosquitto_pub (the payload on stdin, so any bytes go); fail on its error."""
    command = [MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", str(qos), "-s"]
    if retain:
        command.append("-r")
    if user is not None:
        command += ["-u", user[0], "-P", user[1]]
    command += tls or []
    process = await asyncio.create_subprocess_exec(*command, stdin=asyncio.subprocess.PIPE,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    data = payload.encode() if isinstance(payload, str) else payload
    try:
        async with asyncio.timeout(10):
            output, _ = await process.communicate(data)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"mosquitto_pub on {topic} did not finish within 10 s") from None
    assert process.returncode == 0, f"mosquitto_pub on {topic} failed: {output.decode(errors='replace')}"


class Subscriber:
    """mosquitto_sub printing `topic payload` lines of one filter, started before what it should see."""

    def __init__(self, port: int, topic: str) -> None:
        self.port = port
        self.topic = topic
        self.process: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Subscriber:
        self.process = await asyncio.create_subprocess_exec(
            MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(self.port), "-t", self.topic, "-v", "-q", "1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        return self

    async def wait_subscribed(self, port: int, probe_topic: str) -> None:
        """Publish probes on a topic the filter matches until one comes back: the subscription is in place."""
        for _ in range(100):
            await publish(port, probe_topic, "probe", qos=0)
            try:
                line = await self.next_line(timeout=0.2)
            except AssertionError:
                continue
            if line.startswith(probe_topic + " "):
                return
        raise AssertionError("mosquitto_sub did not subscribe within 100 probes")

    async def next_line(self, timeout: float = 15.0) -> str:
        assert self.process is not None and self.process.stdout is not None
        try:
            async with asyncio.timeout(timeout):
                line = await self.process.stdout.readline()
        except TimeoutError:
            raise AssertionError(f"nothing on {self.topic} within {timeout} s") from None
        return line.decode().rstrip("\n")

    async def next_on(self, topic: str, timeout: float = 15.0) -> str:
        """The payload of the next message on `topic`; messages on other topics are passed over."""
        async with asyncio.timeout(timeout + 1):
            while True:
                seen, _, payload = (await self.next_line(timeout)).partition(" ")
                if seen == topic:
                    return payload

    async def __aexit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def fieldgate(*args: str) -> tuple[int, str, str]:
    """Run `fieldgate ARGS…` as a user would; (exit code, stdout, stderr)."""
    import sys

    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                   stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"fieldgate {' '.join(args)} did not finish within 60 s") from None
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def make_token(data_dir: Path, role: str = "operator") -> str:
    """An API token, made by the command line as an operator would (`fieldgate token create`)."""
    import sys

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "token", "create", "--role", role, "--data-dir", str(data_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    return out.decode().strip().splitlines()[-1].split()[-1]
