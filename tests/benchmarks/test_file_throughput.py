"""Benchmark: file throughput on loopback, the node's chunked transfer against a plain `curl` of the same file over
TLS to the same registry.

Run: .venv/bin/pytest -m benchmark tests/benchmarks/test_file_throughput.py -s
Knob: FIELDGATE_BENCH_FILE_MB (100).

`fieldgate registry serve` runs in a subprocess with its bytes in its data dir. Edge → cloud: the node's transport
(gateway.uplink.files.HttpsChunkTransport, the node certificate, 1 MiB chunks each hashed on both sides and fsynced
at the registry before it is acknowledged) against `curl --data-binary @FILE` to `POST /api/v1/files` (one streamed
request, hashed on the way, fsynced every 4 MiB). Cloud → edge: the node fetching every chunk of the file (hashed on
both sides) against `curl` downloading it in one response. Reported: MB/s of each, and the ratio.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from gateway.uplink.files import HttpsChunkTransport
from gateway.uplink.join import client_ssl_context
from gateway.wire import FILE_CHUNK, UploadStart
from tests.files.conftest import random_file
from tests.registry.conftest import Registry, join, registry

pytestmark = pytest.mark.benchmark
__all__ = ["registry"]
SIZE = int(os.environ.get("FIELDGATE_BENCH_FILE_MB", "100")) << 20
CHUNK = int(float(os.environ.get("FIELDGATE_BENCH_CHUNK_MB", str(FILE_CHUNK >> 20))) * (1 << 20))


def curl(*args: str) -> float:
    """Seconds `curl` took for the transfer (its own time_total)."""
    done = subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", *args],
                          capture_output=True, text=True, timeout=300, check=True)
    return float(done.stdout)


async def send_chunks(registry: Registry, node_dir: Path, source: Path, digest: str) -> float:
    async with httpx.AsyncClient(base_url=registry.url, verify=client_ssl_context(node_dir), timeout=60) as client:
        transport = HttpsChunkTransport(client)
        file_id = os.urandom(16).hex()
        started = time.monotonic()
        state = await transport.announce(UploadStart(id=file_id, name="bench.bin", size=SIZE, sha256=digest))
        with source.open("rb") as stream:
            while state.state == "transferring":
                stream.seek(state.offset)
                data = await asyncio.to_thread(stream.read, CHUNK)
                state = await transport.put_chunk(file_id, state.offset, data)
        elapsed = time.monotonic() - started
        assert state.state == "done", state
        return elapsed


async def fetch_chunks(registry: Registry, node_dir: Path, file_id: str, digest: str) -> float:
    async with httpx.AsyncClient(base_url=registry.url, verify=client_ssl_context(node_dir), timeout=60) as client:
        transport = HttpsChunkTransport(client)
        hasher = hashlib.sha256()
        started = time.monotonic()
        offset = 0
        while offset < SIZE:
            data = await transport.get_chunk(file_id, offset, CHUNK)
            hasher.update(data)
            offset += len(data)
        elapsed = time.monotonic() - started
        assert hasher.hexdigest() == digest
        return elapsed


def test_file_throughput_against_curl(registry: Registry, tmp_path: Path) -> None:
    source = tmp_path / "bench.bin"
    digest = random_file(source, SIZE)
    node_dir = tmp_path / "gw"
    assert join(registry, registry.token(), node_dir, "--name", "gw-1").returncode == 0
    token = registry.cli("token", "create", "--role", "operator", "--scope", "platform").stdout.strip()
    common = ["--cacert", str(registry.data_dir / "ca.pem"), "-H", f"Authorization: Bearer {token}"]
    mb = SIZE / 1e6

    chunked_up = asyncio.run(send_chunks(registry, node_dir, source, digest))
    curl_up = curl(*common, "-H", "Content-Type: application/octet-stream", "--data-binary", f"@{source}",
                   f"{registry.url}/api/v1/files?name=bench.bin&nodes=gw-1")
    context = ssl.create_default_context(cafile=registry.data_dir / "ca.pem")
    with httpx.Client(base_url=registry.url, verify=context, headers={"Authorization": f"Bearer {token}"}) as api:
        pushed = [f for f in api.get("/api/v1/files", params={"direction": "to-edge"}).json()]
    assert len(pushed) == 1 and pushed[0]["sha256"] == digest
    if os.environ.get("FIELDGATE_BENCH_PROFILE"):
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.enable()
    chunked_down = asyncio.run(fetch_chunks(registry, node_dir, pushed[0]["id"], digest))
    if os.environ.get("FIELDGATE_BENCH_PROFILE"):
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    curl_down = curl(*common, f"{registry.url}/api/v1/files/{pushed[0]['id']}/content")
    results = {"edge→cloud chunked": mb / chunked_up, "edge→cloud curl": mb / curl_up,
               "cloud→edge chunked": mb / chunked_down, "cloud→edge curl": mb / curl_down}
    print(f"file throughput on loopback, {SIZE >> 20} MiB, MB/s:", json.dumps({k: round(v, 1)
                                                                               for k, v in results.items()}))
    print(f"chunked/curl: up {chunked_up and curl_up / chunked_up:.2f}, down {curl_down / chunked_down:.2f}")
    assert mb / chunked_up > 20 and mb / chunked_down > 20  # a 100 MB transfer in seconds, not minutes
