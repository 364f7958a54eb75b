"""The `pipeline` case of `fieldgate bench`: virtual devices through the poller, twins, the bus and the history
store, in this process, on this box; ops = values written to the history per second at an offered load that
saturates the pipeline. (Modbus devices add the codec: see plugins/modbus/tests/benchmarks.)"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from gateway import codec, router

LOADS = ((50, 20, "100ms"), (200, 50, "50ms"))  # devices, properties, interval


def _config(devices: int, properties: int, interval: str) -> str:
    props = "\n".join(f"  - {{name: p{i}, type: float}}" for i in range(properties))
    visitors = "\n".join(f"  - {{name: p{i}, collect_interval: {interval}, visitor: {{generator: counter, step: 0.5}}}}"
                         for i in range(properties))
    parts = [f"kind: Gateway\nname: bench\neventbus: {{url: none}}\n---\nkind: DeviceModel\nname: m\n"
             f"properties:\n{props}\n"]
    parts += [f"---\nkind: Device\nname: d{d}\nmodel: m\nprotocol: {{name: virtual}}\nproperties:\n{visitors}\n"
              for d in range(devices)]
    return "".join(parts)


async def _measure(devices: int, properties: int, interval: str, seconds: float) -> float:
    from gateway.runtime import Gateway

    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "bench.yaml"
        path.write_text(_config(devices, properties, interval), encoding="utf-8")
        async with Gateway.from_path(path, Path(directory) / "data") as gateway:
            await asyncio.sleep(1.0)
            start, written = time.monotonic(), gateway.store.history.values_written
            await asyncio.sleep(seconds)
            return (gateway.store.history.values_written - written) / (time.monotonic() - start)


def run(quick: bool) -> list[dict[str, Any]]:
    seconds = 2.0 if quick else 8.0
    backend = f"{codec.backend}/{router.backend}"
    results = []
    for devices, properties, interval in LOADS[:1] if quick else LOADS:
        ops = asyncio.run(_measure(devices, properties, interval, seconds))
        results.append({"case": f"pipeline-{devices}x{properties}@{interval}", "backend": backend,
                        "ops_per_s": round(ops)})
    return results
