"""The one module that touches the compiled `gateway._native` (cffi): loading, backend choice, return codes.

`FIELDGATE_NATIVE=auto|c|python` picks the backend once, when gateway.codec and gateway.router are imported:
`auto` uses C when the module is built, `c` demands it (NativeError otherwise), `python` uses the twins.
The C-backed classes here can also be used directly (the tests run every backend side by side).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import CodecError, ConfigError, NativeError

if TYPE_CHECKING:
    from gateway.codec.fields import CompiledField, FieldSpec

MODE_VARIABLE = "FIELDGATE_NATIVE"
MODES = ("auto", "c", "python")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

try:
    from gateway._native import ffi, lib

    _import_error: str | None = None
except ImportError as exc:  # not built: no compiler at install time, or a foreign platform
    ffi = lib = None  # type: ignore[assignment]
    _import_error = str(exc)


def available() -> bool:
    """True when the C module is built and importable, whatever FIELDGATE_NATIVE says."""
    return lib is not None


def require() -> None:
    """Raise NativeError when the C module can not be used."""
    if lib is None:
        raise NativeError(
            f"the native module gateway._native is not available ({_import_error}); "
            "reinstall with a C compiler (pip install -e .) or set FIELDGATE_NATIVE=python"
        )


def selected_backend() -> str:
    """ "c" or "python", as FIELDGATE_NATIVE asks; NativeError when "c" is asked for and not built."""
    mode = os.environ.get(MODE_VARIABLE, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"{MODE_VARIABLE}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "python":
        return "python"
    if mode == "c":
        require()
        return "c"
    return "c" if available() else "python"


def _raise_for(code: int, what: str) -> None:
    if code == lib.FG_ENOMEM:
        raise MemoryError(f"native {what}: out of memory")
    raise NativeError(f"native {what} failed with code {code}")


_msgpack = msgspec.msgpack.Decoder()


class CodecTable:
    """A compiled field table in C: a whole block decodes into one MessagePack buffer msgspec reads."""

    __slots__ = ("_bits", "_decode", "_decode_wire", "_err", "_output", "_packers", "_specs", "_table")

    def __init__(self, specs: Sequence[FieldSpec], compiled: Sequence[CompiledField], *, bits: bool) -> None:
        require()
        self._specs = list(specs)
        self._bits = bits
        self._packers: dict[int, struct.Struct] = {}
        fields = ffi.new("fg_field[]", max(len(compiled), 1))
        for index, field in enumerate(compiled):
            fields[index] = (
                field.type_code,
                field.byte_swap,
                field.word_swap,
                field.bit,
                field.offset,
                field.length,
                field.scale,
                field.deadband,
                field.deadband_percent,
            )
        table = ffi.new("fg_table **")
        err = ffi.new("size_t *")
        code = lib.fg_table_new(fields, len(compiled), int(bits), table, err)
        if code == lib.FG_EBADTABLE:
            raise NativeError(f"native codec rejected field {err[0]} that passed validation")
        if code != lib.FG_OK:
            _raise_for(code, "codec table")
        self._table = ffi.gc(table[0], lib.fg_table_free)
        self._output = lib.fg_table_output(self._table)
        self._err = ffi.new("size_t *")
        self._decode = lib.fg_table_decode
        self._decode_wire = lib.fg_table_decode_wire

    def _registers(self, block: Sequence[int]) -> bytes:
        """The block as native-endian uint16 bytes (slow path: a new block size or bad values)."""
        size = len(block)
        if size not in self._packers:
            if len(self._packers) > 32:  # blocks of many sizes: keep the cache bounded
                self._packers.clear()
            self._packers[size] = struct.Struct(f"={size}H")  # native order: C reads uint16_t
        try:
            return self._packers[size].pack(*block)
        except (struct.error, OverflowError, TypeError) as exc:
            from gateway.codec.fields import check_block

            check_block(block, bits=self._bits)
            raise CodecError(f"block could not be read as registers: {exc}") from exc

    def _fail(self, code: int, block: Sequence[int]) -> None:
        from gateway.codec.fields import bad_block_value, block_too_short

        index = self._err[0]
        if code == lib.FG_ERANGE:
            raise bad_block_value(index, block[index], bits=self._bits)
        if code == lib.FG_ESHORT:
            raise block_too_short(index, self._specs[index], len(block), bits=self._bits)
        _raise_for(code, "decode")

    # decode and decode_changes repeat their few lines: one Python frame per block is part of the speed.
    def decode(self, block: Sequence[int]) -> list[Any]:
        size = len(block)
        try:
            packed = self._packers[size].pack(*block)
        except (KeyError, struct.error, OverflowError, TypeError):
            packed = self._registers(block)
        length = self._decode(self._table, packed, size, 0, self._err)
        if length < 0:
            self._fail(length, block)
        values: list[Any] = _msgpack.decode(ffi.buffer(self._output, length))
        return values

    def decode_wire(self, data: bytes) -> list[Any]:
        """`decode` for registers as a Modbus frame carries them: two bytes each, big-endian."""
        if len(data) & 1:
            raise CodecError(f"a register block on the wire has an even length, got {len(data)} bytes")
        length = self._decode_wire(self._table, data, len(data) >> 1, 0, self._err)
        if length < 0:
            self._fail(length, struct.unpack(f">{len(data) >> 1}H", data))
        values: list[Any] = _msgpack.decode(ffi.buffer(self._output, length))
        return values

    def decode_changes(self, block: Sequence[int]) -> list[tuple[int, Any]]:
        size = len(block)
        try:
            packed = self._packers[size].pack(*block)
        except (KeyError, struct.error, OverflowError, TypeError):
            packed = self._registers(block)
        length = self._decode(self._table, packed, size, 1, self._err)
        if length < 0:
            self._fail(length, block)
        flat = iter(_msgpack.decode(ffi.buffer(self._output, length)))
        return list(zip(flat, flat, strict=True))

    def reset_changes(self) -> None:
        lib.fg_table_reset_changes(self._table)


def _route_id(route_id: int) -> int:
    if not isinstance(route_id, int) or isinstance(route_id, bool) or not INT64_MIN <= route_id <= INT64_MAX:
        raise ConfigError(f"route id must be a 64-bit signed integer, got {route_id!r}")
    return route_id


class TopicRouter:
    """MQTT topic router over the C trie; every add and remove updates the trie in place."""

    __slots__ = ("_capacity", "_match", "_results", "_router", "_unpack")

    _packed = msgspec.msgpack.Decoder(list[tuple[int, ...]])  # tuples: the empty one is shared, not made

    def __init__(self) -> None:
        require()
        router = ffi.new("fg_router **")
        code = lib.fg_router_new(router)
        if code != lib.FG_OK:
            _raise_for(code, "router")
        self._router = ffi.gc(router[0], lib.fg_router_free)
        self._results = lib.fg_router_results(self._router)
        self._capacity = 0  # the result buffer as last seen; C moves it only to grow it
        self._match = lib.fg_router_match
        self._unpack = ffi.unpack

    def add(self, route_id: int, topic_filter: str) -> None:
        """Route `route_id` for topics matching `topic_filter`; adding the same pair twice is a no-op."""
        from gateway.router.topics import validate_filter

        validate_filter(topic_filter)
        data = topic_filter.encode()
        code = lib.fg_router_add(self._router, _route_id(route_id), data, len(data))
        if code < 0:
            if code == lib.FG_EARG:
                raise NativeError(f"native router rejected filter {topic_filter!r} that passed validation")
            _raise_for(code, "router add")

    def remove(self, route_id: int) -> None:
        """Remove every filter of `route_id` (nothing happens for an unknown id)."""
        code = lib.fg_router_remove(self._router, _route_id(route_id))
        if code < 0:
            _raise_for(code, "router remove")

    def match(self, topic: str) -> list[int]:
        """Ids of the routes whose filters match `topic`, ascending, each once."""
        try:
            data = topic.encode()
        except (AttributeError, UnicodeEncodeError):
            data = b""  # the topic check in _failed names the problem
        found = self._match(self._router, data, len(data))
        if found == 1 and self._capacity:
            return [self._results[0]]
        if 0 < found <= self._capacity:
            return self._unpack(self._results, found)  # type: ignore[no-any-return]
        if found == 0:
            return []
        if found > 0:  # the buffer grew (or is seen for the first time): read where it is now
            self._results = lib.fg_router_results(self._router)
            self._capacity = lib.fg_router_capacity(self._router)
            return self._unpack(self._results, found)  # type: ignore[no-any-return]
        return self._failed(topic, found)

    def match_many(self, topics: Sequence[str]) -> list[tuple[int, ...]]:
        """The ids of every topic's routes (sorted, each once, as match() gives them), in one C call."""
        try:
            data = "\0".join(topics).encode()
        except (TypeError, UnicodeEncodeError):
            data = b""  # the topic check in _failed_many names the problem
        size = lib.fg_router_match_many(self._router, data, len(data), len(topics))
        if size < 0:
            return self._failed_many(topics, size)
        ids: list[tuple[int, ...]] = self._packed.decode(ffi.buffer(lib.fg_router_packed(self._router), size))
        return ids

    def _failed_many(self, topics: Sequence[str], code: int) -> list[tuple[int, ...]]:
        if code == lib.FG_EARG:
            from gateway.router.topics import validate_topic

            for topic in topics:
                validate_topic(topic)
            index = lib.fg_router_bad_index(self._router)
            raise NativeError(f"native router rejected topic {index} of the batch, which passed validation")
        _raise_for(code, "router match")
        return []

    def _failed(self, topic: str, code: int) -> list[int]:
        if code == lib.FG_EARG:
            from gateway.router.topics import validate_topic

            validate_topic(topic)
            raise NativeError(f"native router rejected topic {topic!r} that passed validation")
        _raise_for(code, "router match")
        return []

    def __len__(self) -> int:
        return int(lib.fg_router_len(self._router))
