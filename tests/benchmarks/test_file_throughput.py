"""Benchmark: file throughput on loopback, both ways, over the node's two paths against a plain `curl` of the same
file over TLS to the same registry.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_file_throughput.py -s
Knob: FIELDGATE_BENCH_FILE_MB (100).

`fieldgate registry serve` runs in a subprocess with its bytes in its data dir. The node's side runs in the test's
process with the node's certificate, through the transports a gateway uses:
- channel: gateway.uplink.filechannel.ChannelChunkTransport on a channel connection (64 KiB pieces each hashed on
  both sides, two in flight by the stream's credit, fsynced every 4 MiB by the receiver);
- HTTPS: gateway.uplink.files.HttpsChunkTransport (1 MiB chunks hashed on both sides, one request at a time).
Edge → cloud: the registry checks, writes and fsyncs what it receives; curl sends the file with `--data-binary @FILE`
to `POST /api/v1/files` (one streamed request, hashed on the way, fsynced every 4 MiB). Cloud → edge: the node
writes what it receives to a file as a gateway does (fsynced every 4 MiB); curl downloads it in one response to
/dev/null. Reported: MB/s of each, and each path's share of curl's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.channel import Multiplexer, Stream, decode_frame, encode_frame
from gateway.uplink.channel import channel_url
from gateway.uplink.filechannel import ChannelChunkTransport
from gateway.uplink.files import ChunkTransport, HttpsChunkTransport, IncomingFile
from gateway.uplink.join import client_ssl_context
from gateway.wire import CHANNEL_PATH, MAX_CHANNEL_FRAME, FileOffer, Hello, UploadStart, UploadState, Welcome
from tests.files.conftest import random_file
from tests.registry.conftest import Registry, join, registry

pytestmark = pytest.mark.benchmark
__all__ = ["registry"]
SIZE = int(os.environ.get("FIELDGATE_BENCH_FILE_MB", "100")) << 20


def curl(*args: str) -> float:
    """Seconds `curl` took for the transfer (its own time_total)."""
    done = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", *args],
                          capture_output=True, text=True, timeout=300, check=True)
    return float(done.stdout)


class BenchLink:
    """A channel connection of the node (Hello, Welcome, the multiplexer), as gateway.uplink.channel dials it."""

    up = True

    def __init__(self, mux: Multiplexer) -> None:
        self.mux = mux

    async def open_stream(self, kind: str, meta: dict[str, Any] | None = None) -> Stream:
        return await self.mux.open_stream(kind, meta)


@contextlib.asynccontextmanager
async def channel(registry: Registry, node_dir: Path) -> AsyncIterator[BenchLink]:
    from websockets.asyncio.client import connect

    from gateway.uplink.channel import WRITE_LIMIT

    async with connect(channel_url(registry.url, CHANNEL_PATH), ssl=client_ssl_context(node_dir),
                       max_size=MAX_CHANNEL_FRAME, write_limit=WRITE_LIMIT, compression=None) as socket:
        await socket.send(encode_frame(Hello()))
        assert isinstance(decode_frame(bytes(await socket.recv())), Welcome)  # type: ignore[arg-type]
        mux = Multiplexer(socket.send, odd=True)

        async def read() -> None:
            while True:
                frame = decode_frame(bytes(await socket.recv()))  # type: ignore[arg-type]
                if frame is not None:
                    mux.dispatch(frame)  # pushes and answers: not what this measures

        tasks = [asyncio.create_task(mux.run_writer()), asyncio.create_task(read())]
        try:
            yield BenchLink(mux)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await mux.close("done")


async def nothing(_: int) -> None:
    return None


async def send(transport: ChunkTransport, source: Path, digest: str) -> float:
    file_id = os.urandom(16).hex()
    started = time.monotonic()
    state = await transport.announce(UploadStart(id=file_id, name="bench.bin", size=SIZE, sha256=digest))

    async def acked(_: UploadState) -> None:
        return None

    state = await transport.send(file_id, source, SIZE, state, nothing, acked)
    elapsed = time.monotonic() - started
    assert state.state == "done", state
    return elapsed


async def fetch(transport: ChunkTransport, offer: FileOffer, target: Path) -> float:
    digest = hashlib.sha256()
    await asyncio.to_thread(target.unlink, missing_ok=True)
    writer = IncomingFile(target, 0, digest)

    async def sink(pieces: list[bytes]) -> None:
        await asyncio.to_thread(writer.write, pieces)

    started = time.monotonic()
    await transport.fetch(offer, 0, nothing, sink)
    await asyncio.to_thread(writer.close)
    elapsed = time.monotonic() - started
    assert digest.hexdigest() == offer.sha256
    return elapsed


async def over_https(registry: Registry, node_dir: Path, source: Path, digest: str, offer: FileOffer,
                     target: Path) -> tuple[float, float]:
    async with httpx.AsyncClient(base_url=registry.url, verify=client_ssl_context(node_dir), timeout=60) as client:
        transport = HttpsChunkTransport(client)
        return await send(transport, source, digest), await fetch(transport, offer, target)


async def over_channel(registry: Registry, node_dir: Path, source: Path, digest: str, offer: FileOffer,
                       target: Path) -> tuple[float, float]:
    async with channel(registry, node_dir) as link:
        transport = ChannelChunkTransport(link)  # type: ignore[arg-type]
        return await send(transport, source, digest), await fetch(transport, offer, target)


def test_file_throughput_against_curl(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "bench.bin"
    digest = random_file(source, SIZE)
    node_dir = tmp_path / "gw"
    assert join(registry, registry.token(), node_dir, "--name", "gw-1").returncode == 0
    token = registry.cli("token", "create", "--role", "operator", "--scope", "platform").stdout.strip()
    common = ["--cacert", str(registry.data_dir / "ca.pem"), "-H", f"Authorization: Bearer {token}"]
    mb = SIZE / 1e6

    curl_up = curl(*common, "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{source}",
                   f"{registry.url}/api/v1/files?name=bench.bin&nodes=gw-1")
    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    with httpx.Client(base_url=registry.url, verify=context, headers={"Authorization": f"Bearer {token}"}) as api:
        pushed = api.get("/api/v1/files", params={"direction": "to-edge"}).json()
    assert len(pushed) == 1 and pushed[0]["sha256"] == digest
    offer = FileOffer(id=pushed[0]["id"], name="bench.bin", path="", size=SIZE, sha256=digest)
    curl_down = curl(*common, f"{registry.url}/api/v1/files/{offer.id}/content")
    target = tmp_path / "received.bin"
    https_up, https_down = asyncio.run(over_https(registry, node_dir, source, digest, offer, target))
    channel_up, channel_down = asyncio.run(over_channel(registry, node_dir, source, digest, offer, target))
    results = {"edge→cloud channel": mb / channel_up, "edge→cloud HTTPS": mb / https_up,
               "edge→cloud curl": mb / curl_up, "cloud→edge channel": mb / channel_down,
               "cloud→edge HTTPS": mb / https_down, "cloud→edge curl": mb / curl_down}
    print(f"\nfile throughput on loopback, {SIZE >> 20} MiB, MB/s:", json.dumps({k: round(v, 1)
                                                                                 for k, v in results.items()}))
    print(f"share of curl: channel up {curl_up / channel_up:.2f} down {curl_down / channel_down:.2f}; "
          f"HTTPS up {curl_up / https_up:.2f} down {curl_down / https_down:.2f}")
    assert mb / channel_up > 20 and mb / channel_down > 20  # a 100 MB transfer in seconds, not minutes
    assert mb / https_up > 20 and mb / https_down > 20
