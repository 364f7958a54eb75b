"""The service benchmarks' client: throughput (MB echoed both ways on one connection), round-trip latency of 64 bytes
(p50/p99 in ms) and connections per second (connect, one round trip, close) to HOST PORT. The benchmarks import
`measure` and `print_paths`; run inside a network namespace it is a program of its own.

Usage: bench.py HOST PORT MB ROUNDS CONNECTIONS; prints one JSON object."""

import asyncio
import json
import statistics
import sys
import time


async def throughput(host: str, port: int, mb: int) -> float:
    reader, writer = await asyncio.open_connection(host, port)
    block = b"x" * (1 << 16)
    total = mb << 20
    started = time.perf_counter()

    async def send() -> None:
        for _ in range(total // len(block)):
            writer.write(block)
            await writer.drain()

    async def receive() -> None:
        got = 0
        while got < total:
            chunk = await asyncio.wait_for(reader.read(1 << 18), 30)
            if not chunk:
                raise ConnectionError("the echo ended early")
            got += len(chunk)

    await asyncio.gather(send(), receive())
    seconds = time.perf_counter() - started
    writer.close()
    return total / seconds / 1e6


async def latency(host: str, port: int, rounds: int) -> list[float]:
    reader, writer = await asyncio.open_connection(host, port)
    payload = b"p" * 64
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        writer.write(payload)
        await writer.drain()
        got = b""
        while len(got) < len(payload):
            got += await asyncio.wait_for(reader.read(64), 30)
        times.append((time.perf_counter() - started) * 1000)
    writer.close()
    return times


async def connections(host: str, port: int, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"p")
        await writer.drain()
        if await asyncio.wait_for(reader.read(1), 30) != b"p":
            raise ConnectionError("no echo")
        writer.close()
    return count / (time.perf_counter() - started)


async def measure(host: str, port: int, mb: int, rounds: int, count: int) -> dict[str, float]:
    """{"MB/s", "p50", "p99" (ms), "conn/s"} of the echo at host:port."""
    times = await latency(host, port, rounds)
    cuts = statistics.quantiles(times, n=100)
    return {"MB/s": await throughput(host, port, mb), "p50": cuts[49], "p99": cuts[98],
            "conn/s": await connections(host, port, count)}


def print_paths(title: str, results: dict[str, dict[str, float]], base: str = "plain") -> None:
    """One line per path, with what it adds to the `base` path's latency."""
    print(f"\n{title}")
    print(f"{'path':8} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'+p50 ms':>8} {'+p99 ms':>8} {'conn/s':>8}")
    plain = results[base]
    for path, r in results.items():
        print(f"{path:8} {r['MB/s']:8.1f} {r['p50']:8.3f} {r['p99']:8.3f} {r['p50'] - plain['p50']:8.3f} "
              f"{r['p99'] - plain['p99']:8.3f} {r['conn/s']:8.0f}")


async def main() -> None:
    host, port, mb, rounds, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    print(json.dumps(await measure(host, port, mb, rounds, count)))


if __name__ == "__main__":
    asyncio.run(main())
