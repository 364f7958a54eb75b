"""The embedded broker: a mosquitto child process on 127.0.0.1, supervised by the gateway.

mosquitto rather than a Python broker in the loop: it relays as fast as anything measured here, costs a few MB,
is the broker the appliance runs anyway, and keeps the gateway's loop free for polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from pathlib import Path

from gateway.errors import ConfigError

log = logging.getLogger(__name__)


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)


class EmbeddedBroker:
    def __init__(self, data_dir: Path, host: str, port: int) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.process: asyncio.subprocess.Process | None = None

    def config_text(self) -> str:
        return (f"listener {self.port} {self.host}\nallow_anonymous true\npersistence false\n"
                "log_dest stderr\nlog_type error\nlog_type warning\n")

    async def run(self) -> None:
        """Run mosquitto until cancelled; a broker that exits raises, so the supervisor restarts it."""
        binary = find_mosquitto()
        if binary is None:
            raise ConfigError("eventbus url `embedded` needs the mosquitto binary (apt-get install mosquitto), "
                              "or set eventbus.url to an existing broker or `none`")
        conf = self.data_dir / "mosquitto.conf"
        conf.write_text(self.config_text(), encoding="utf-8")
        self.process = await asyncio.create_subprocess_exec(
            binary, "-c", str(conf), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        log.info("embedded broker (mosquitto, pid %d) on %s:%d", self.process.pid, self.host, self.port)
        try:
            assert self.process.stderr is not None
            stderr = await self.process.stderr.read()
            code = await self.process.wait()
            raise ConfigError(f"embedded broker exited with {code}: {stderr.decode(errors='replace').strip()}")
        finally:
            await self.stop()

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            async with asyncio.timeout(5):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
