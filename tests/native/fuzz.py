"""Random bytes and random tables thrown at the C entry points; run in-process or under AddressSanitizer.

`python -m tests.native.fuzz [path/to/_native.so] [iterations]` loads that build of the module (the ASan test
passes its own) and exits non-zero on any broken promise; a memory error aborts the process.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from types import ModuleType
from typing import Any

import msgspec

CODES = {0, -1, -2, -3, -4, -5}


def load(path: str | None) -> ModuleType:
    if path is None:
        from gateway import _native

        return _native  # type: ignore[return-value]
    spec = importlib.util.spec_from_file_location("gateway._native", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NAN, INF = float("nan"), float("inf")
BAD_VALUES: list[list[Any]] = [
    [-2, 10, 12, 2**31 - 1],  # type
    [-1, 2, 7],  # byte_swap
    [-1, 2, 7],  # word_swap
    [-2, 16, 40],  # bit
    [-1, 2**62, -(2**63)],  # offset
    [0, -1, 2**40, 2**63 - 1],  # length
    [0.0, NAN, INF, -INF],  # scale
    [-1.0, NAN, INF],  # deadband
    [2, -1],  # deadband_percent
]


def random_field(rng: random.Random, bits: int) -> tuple[Any, ...]:
    """Mostly valid fields (so decoding gets exercised), now and then one attribute out of range."""
    kind = 9 if bits else rng.randint(0, 9)
    field = [
        kind,
        rng.randint(0, 1),
        rng.randint(0, 1),
        rng.randint(-1, 15) if kind == 9 and not bits else -1,
        rng.randint(0, 40),
        rng.randint(1, 30) if kind == 8 else 1,
        rng.choice([1.0, 0.1, -3.0, 1e308, 5e-324]),
        rng.choice([0.0, 0.5, 10.0, 1e300]),
        rng.randint(0, 1),
    ]
    if rng.random() < 0.05:
        slot = rng.randrange(len(BAD_VALUES))
        field[slot] = rng.choice(BAD_VALUES[slot])
    return tuple(field)


def fuzz_codec(native: ModuleType, rng: random.Random, iterations: int) -> None:
    ffi, lib = native.ffi, native.lib
    decoded = 0
    for _ in range(iterations):
        count = rng.randint(0, 12)
        bits = rng.randint(0, 1)
        fields = ffi.new("fg_field[]", max(count, 1))
        for index in range(count):
            fields[index] = random_field(rng, bits if rng.random() < 0.95 else 1 - bits)
        table, err = ffi.new("fg_table **"), ffi.new("size_t *")
        code = lib.fg_table_new(fields, count, bits, table, err)
        assert code in CODES, code
        if code != 0:
            assert code == lib.FG_EBADTABLE and err[0] < count
            continue
        try:
            for _ in range(4):
                size = rng.randint(0, 72)
                raw = rng.randbytes(2 * size)
                if bits and rng.random() < 0.8:
                    raw = bytes(b if k % 2 else 0 for k, b in enumerate(rng.randbytes(2 * size)))
                    raw = bytes(min(b, 1) for b in raw)
                decode = lib.fg_table_decode_wire if rng.random() < 0.5 else lib.fg_table_decode
                code = decode(table[0], raw, size, rng.randint(0, 1), err)
                assert code > 0 or code in (lib.FG_ESHORT, lib.FG_ERANGE), code
                if code > 0:
                    decoded += 1
                    msgspec.msgpack.decode(ffi.buffer(lib.fg_table_output(table[0]), code))
                if rng.random() < 0.2:
                    lib.fg_table_reset_changes(table[0])
        finally:
            lib.fg_table_free(table[0])
    assert decoded > iterations // 4, f"only {decoded} blocks decoded: the fuzzer is not reaching the decoder"
    # null and degenerate arguments
    assert lib.fg_table_new(ffi.NULL, 3, 0, ffi.new("fg_table **"), ffi.new("size_t *")) == lib.FG_EARG
    assert lib.fg_table_decode(ffi.NULL, ffi.NULL, 0, 0, ffi.NULL) == lib.FG_EARG
    assert lib.fg_table_decode_wire(ffi.NULL, ffi.NULL, 0, 0, ffi.NULL) == lib.FG_EARG
    lib.fg_table_free(ffi.NULL)


ALPHABET = b"ab/+#$\x00/ /\xff"


def random_text(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return rng.randbytes(rng.randint(0, 12))
    return bytes(rng.choice(ALPHABET) for _ in range(rng.randint(0, 10)))


def fuzz_router(native: ModuleType, rng: random.Random, iterations: int) -> None:
    ffi, lib = native.ffi, native.lib
    holder = ffi.new("fg_router **")
    assert lib.fg_router_new(holder) == 0
    router = holder[0]
    try:
        for _ in range(iterations):
            action = rng.random()
            route_id = rng.choice([rng.randint(-3, 40), 2**63 - 1, -(2**63)])
            if action < 0.5:
                data = random_text(rng)
                assert lib.fg_router_add(router, route_id, data, len(data)) in (0, 1, lib.FG_EARG)
            elif action < 0.6:
                assert lib.fg_router_remove(router, route_id) >= 0
            else:
                data = random_text(rng)
                found = lib.fg_router_match(router, data, len(data))
                assert found == lib.FG_EARG or 0 <= found <= lib.fg_router_capacity(router), found
                if found > 0:
                    values = ffi.unpack(lib.fg_router_results(router), found)
                    assert values == sorted(set(values))
                batch = [random_text(rng) for _ in range(rng.randint(0, 4))]
                data = b"\0".join(batch)
                count = len(batch) + rng.choice([0, 0, 0, -1, 1])
                size = lib.fg_router_match_many(router, data, len(data), max(count, 0))
                assert size == lib.FG_EARG or size > 0, size
                if size > 0:
                    assert bytes(ffi.buffer(lib.fg_router_packed(router), size))[0] in (0x90 + max(count, 0), 0xDD)
        assert lib.fg_router_add(router, 1, ffi.NULL, 0) == lib.FG_EARG
        assert lib.fg_router_match(router, ffi.NULL, 0) == lib.FG_EARG
        assert lib.fg_router_match_many(router, ffi.NULL, 5, 1) == lib.FG_EARG
    finally:
        lib.fg_router_free(router)
    lib.fg_router_free(ffi.NULL)


def main(argv: list[str]) -> int:
    native = load(argv[1] if len(argv) > 1 and argv[1] != "-" else None)
    iterations = int(argv[2]) if len(argv) > 2 else 2000
    rng = random.Random(int(argv[3]) if len(argv) > 3 else 1234)
    fuzz_codec(native, rng, iterations)
    fuzz_router(native, rng, iterations * 5)
    print("fuzz ok")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
