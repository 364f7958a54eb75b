"""`fieldgate bench codec|router|pipeline [--quick] [--json]`: throughput of the hot paths on every backend.

codec: 125-register blocks of mixed types decoded by the C table, the Python twin and pymodbus'
`convert_from_registers`; ops = decoded values. router: 10, 1,000 and 100,000 filters matched by the C trie,
the Python twin and a linear scan with paho's `topic_matches_sub`, one topic a call and (C and Python) 256 topics a
call; ops = matched topics. pipeline: delegated to
`gateway.ops.bench_pipeline.run(quick)` when that module exists. pymodbus and paho-mqtt are bench-only dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Literal

from gateway import native
from gateway.codec import FieldSpec, encode
from gateway.codec import python as python_codec
from gateway.router import python as python_router

Result = dict[str, Any]
PIPELINE_MODULE = "gateway.ops.bench_pipeline"
ROUTER_SIZES = (10, 1_000, 100_000)
_MIXED = ("float32", "int16", "uint32", "float64", "int32", "uint16", "bool", "int64", "uint64", "string")


def measure(call: Callable[[], object], ops_per_call: int, budget: float) -> float:
    """Operations per second of `call`: the best of ~10 ms slices over about `budget` seconds, after one warm-up
    call. The best slice, as timeit takes the best repeat: what the box does when nothing else has the core."""
    warm_up = time.perf_counter()
    call()
    batch = max(1, int(0.01 / max(time.perf_counter() - warm_up, 1e-9)))  # ~10 ms between clock reads
    best = 0.0
    start = now = time.perf_counter()
    while now - start < budget or best == 0.0:
        began = now
        for _ in range(batch):
            call()
        now = time.perf_counter()
        best = max(best, ops_per_call * batch / max(now - began, 1e-9))
    return best


def codec_fields(registers: int = 125) -> list[FieldSpec]:
    """A register map of mixed types, orders and scales filling `registers` registers."""
    fields: list[FieldSpec] = []
    offset = 0
    for index in range(registers):
        kind = _MIXED[index % len(_MIXED)]
        field = FieldSpec(
            offset=offset,
            type=kind,
            length=4 if kind == "string" else 1,
            word_order="little" if index % 3 == 0 and kind != "string" else "big",
            scale=0.1 if kind in ("int16", "int32") else 1.0,
        )
        size = {"string": 4, "float64": 4, "int64": 4, "uint64": 4, "float32": 2, "uint32": 2, "int32": 2}.get(kind, 1)
        if offset + size > registers:
            break
        fields.append(field)
        offset += size
    return fields


def codec_block(fields: Sequence[FieldSpec], registers: int = 125) -> list[int]:
    rng = random.Random(125)
    block = [0] * registers
    for field in fields:
        value: Any = {
            "string": "pump-A",
            "bool": True,
            "float32": rng.uniform(-1e3, 1e3),
            "float64": rng.uniform(-1e6, 1e6),
        }.get(field.type, rng.randrange(0, 3000))
        words = encode(field, value)
        block[field.offset : field.offset + len(words)] = words
    return block


def _pymodbus_decoder(fields: Sequence[FieldSpec]) -> Callable[[Sequence[int]], list[Any]]:
    from pymodbus.client.mixin import ModbusClientMixin

    convert = ModbusClientMixin.convert_from_registers
    datatype = ModbusClientMixin.DATATYPE
    plan = []
    for field in fields:
        kind = "uint16" if field.type == "bool" else field.type
        dtype = getattr(datatype, kind.upper())
        count = field.length if field.type == "string" else dtype.value[1]
        word_order: Literal["big", "little"] = "little" if field.word_order == "little" else "big"
        plan.append((field.offset, field.offset + count, dtype, word_order, field.scale, field.type == "bool"))

    def decode(block: Sequence[int]) -> list[Any]:
        values: list[Any] = []
        for start, stop, dtype, word_order, scale, is_bool in plan:
            value: Any = convert(block[start:stop], dtype, word_order=word_order)
            if is_bool:
                value = value != 0
            elif scale != 1.0:
                value = value * scale
            values.append(value)
        return values

    return decode


def bench_codec(quick: bool) -> list[Result]:
    budget = 0.3 if quick else 2.0
    fields = codec_fields()
    block = codec_block(fields)
    decoders: list[tuple[str, Callable[[Sequence[int]], list[Any]]]] = []
    if native.available():
        from gateway.codec.native import FieldTable as NativeFieldTable

        decoders.append(("c", NativeFieldTable(fields).decode))
    decoders.append(("python", python_codec.FieldTable(fields).decode))
    try:
        decoders.append(("pymodbus", _pymodbus_decoder(fields)))
    except ImportError:
        print("fieldgate bench: pymodbus is not installed; skipping its case", file=sys.stderr)
    case = f"codec-{len(block)}-registers-{len(fields)}-values"
    results: list[Result] = []
    for name, decode in decoders:

        def run(decode: Callable[[Sequence[int]], list[Any]] = decode) -> None:
            decode(block)

        results.append({"case": case, "backend": name, "ops_per_s": measure(run, len(fields), budget)})
    return results


def router_filters(count: int) -> list[str]:
    """Filters shaped like a gateway's routes: mostly exact telemetry topics, some wildcards, some twin topics."""
    filters = []
    for i in range(count):
        kind = i % 10
        if kind < 6:
            filters.append(f"fieldgate/node{i % 7}/ns{i % 3}/dev{i}/telemetry")
        elif kind < 8:
            filters.append(f"fieldgate/+/ns{i % 3}/dev{i - 6}/#")
        elif kind == 8:
            filters.append(f"fieldgate/node{i % 7}/+/dev{i - 8}/+")
        else:
            filters.append(f"$hw/events/device/ns{i % 3}/dev{i}/twin/+")
    return filters


def router_topics(count: int, sample: int = 256) -> list[str]:
    rng = random.Random(count)
    topics = []
    for _ in range(sample):
        i = rng.randrange(count)
        if i % 4 == 3:
            topics.append(f"$hw/events/device/ns{i % 3}/dev{i}/twin/update")
        else:
            topics.append(f"fieldgate/node{i % 7}/ns{i % 3}/dev{i}/telemetry")
    return topics


def _scan_matcher(filters: Sequence[str]) -> Callable[[str], list[int]]:
    from paho.mqtt.client import topic_matches_sub

    pairs = list(enumerate(filters))
    return lambda topic: [rid for rid, f in pairs if topic_matches_sub(f, topic)]


def bench_router(quick: bool) -> list[Result]:
    """Per topic (`router-N-filters`: one match() call a topic) and per batch (`router-N-filters-batch`: one
    match_many() call for 256 topics, the way the eventbus ingress routes a burst) on each backend."""
    budget = 0.2 if quick else 1.5
    results: list[Result] = []
    for size in ROUTER_SIZES:
        filters = router_filters(size)
        topics = router_topics(size)
        runs: list[tuple[str, str, Callable[[], object], int]] = []
        classes: list[tuple[str, Any]] = []
        if native.available():
            from gateway.router.native import TopicRouter as NativeRouter

            classes.append(("c", NativeRouter))
        classes.append(("python", python_router.TopicRouter))
        for name, router_class in classes:
            router = router_class()
            for route_id, topic_filter in enumerate(filters):
                router.add(route_id, topic_filter)
            runs.append((f"router-{size}-filters", name, _each(router.match, topics), len(topics)))
            runs.append((f"router-{size}-filters-batch", name, partial(router.match_many, topics), len(topics)))
        try:
            scan_topics = topics[: max(1, 2_000 // size)]
            runs.append((f"router-{size}-filters", "scan", _each(_scan_matcher(filters), scan_topics),
                         len(scan_topics)))
        except ImportError:
            print("fieldgate bench: paho-mqtt is not installed; skipping the scan case", file=sys.stderr)
        for case, name, run, ops in runs:
            case_budget = min(budget, 0.3) if name == "scan" else budget
            results.append({"case": case, "backend": name, "ops_per_s": measure(run, ops, case_budget)})
    return results


def _each(match: Callable[[str], list[int]], topics: list[str]) -> Callable[[], None]:
    def run() -> None:
        for topic in topics:
            match(topic)

    return run


def run_pipeline(quick: bool) -> list[Result] | None:
    """The end-to-end pipeline case from gateway.bench_pipeline.run(quick), or None when it is not there."""
    if importlib.util.find_spec(PIPELINE_MODULE) is None:
        return None
    module = importlib.import_module(PIPELINE_MODULE)
    results: list[Result] = module.run(quick)
    return results


SUITES: dict[str, Callable[[bool], list[Result] | None]] = {
    "codec": bench_codec,
    "router": bench_router,
    "pipeline": run_pipeline,
}


def _print(results: Iterable[Result], as_json: bool) -> None:
    for result in results:
        if as_json:
            print(json.dumps({key: result[key] for key in ("case", "backend", "ops_per_s")}), flush=True)
        else:
            print(f"{result['case']:<36} {result['backend']:<10} {result['ops_per_s']:>16,.0f} ops/s", flush=True)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("suite", choices=tuple(SUITES), help="what to measure")
    parser.add_argument("--quick", action="store_true", help="short runs (a few seconds in all)")
    parser.add_argument("--json", action="store_true", help='one {"case", "backend", "ops_per_s"} object per line')


def run(args: argparse.Namespace) -> int:
    if not native.available():
        print("fieldgate bench: gateway._native is not built; measuring the Python backends only", file=sys.stderr)
    results = SUITES[args.suite](args.quick)
    if results is None:
        print(f"fieldgate bench: the {args.suite} benchmark is unavailable ({PIPELINE_MODULE} is not installed)",
              file=sys.stderr)
        return 2
    _print(results, args.json)
    return 0
