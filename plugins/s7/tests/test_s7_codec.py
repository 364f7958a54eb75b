"""S7 values to and from bytes, checked against python-snap7's own getters and setters and against struct."""

from __future__ import annotations

import datetime as dt
import struct
from typing import Any

import msgspec
import pytest
import snap7.util as reference
from fieldgate_s7.codec import RangeDecoder, decode, encode
from fieldgate_s7.config import S7Visitor

from gateway.errors import CodecError


def visitor(kind: str, **more: Any) -> S7Visitor:
    return msgspec.convert({"db": 1, "offset": 0, "type": kind, **more}, S7Visitor)


@pytest.mark.parametrize(("kind", "fmt", "value"), [
    ("BYTE", ">B", 200), ("SINT", ">b", -100), ("WORD", ">H", 0xBEEF), ("INT", ">h", -12345), ("UINT", ">H", 65535),
    ("DWORD", ">I", 0xDEADBEEF), ("DINT", ">i", -2_000_000_000), ("UDINT", ">I", 4_000_000_000),
    ("LINT", ">q", -(2**62)), ("ULINT", ">Q", 2**64 - 1), ("LWORD", ">Q", 2**63), ("TIME", ">i", -86_400_000),
    ("REAL", ">f", 21.5), ("LREAL", ">d", -1.0e300),
])
def test_numbers_are_big_endian(kind: str, fmt: str, value: Any) -> None:
    raw = struct.pack(fmt, value)
    assert encode(visitor(kind), value) == raw
    assert decode(visitor(kind), raw) == value


def test_dates_and_times_match_python_snap7() -> None:
    stamp = dt.datetime(2024, 3, 5, 12, 30, 45, 123000)
    buffer = bytearray(12)
    reference.set_dtl(buffer, 0, stamp)
    assert decode(visitor("DTL"), buffer) == "2024-03-05T12:30:45.123"
    assert encode(visitor("DTL"), "2024-03-05T12:30:45.123") == bytes(buffer)
    assert decode(visitor("DTL"), encode(visitor("DTL"), "2024-03-05T12:30:45.123456789")) == \
        "2024-03-05T12:30:45.123456789"
    buffer = bytearray(8)
    reference.set_dt(buffer, 0, stamp)
    assert decode(visitor("DATE_AND_TIME"), buffer) == "2024-03-05T12:30:45.123"
    assert encode(visitor("DATE_AND_TIME"), "2024-03-05 12:30:45.123") == bytes(buffer)
    assert reference.get_dt(bytearray(encode(visitor("DATE_AND_TIME"), "1999-12-31T23:59:59")), 0) == \
        "1999-12-31T23:59:59.000000"
    buffer = bytearray(2)
    reference.set_date(buffer, 0, dt.date(2024, 3, 5))
    assert decode(visitor("DATE"), buffer) == "2024-03-05"
    assert encode(visitor("DATE"), "2024-03-05") == bytes(buffer)
    buffer = bytearray(4)
    reference.set_tod(buffer, 0, dt.timedelta(hours=12, minutes=30, seconds=45, milliseconds=120))
    assert decode(visitor("TIME_OF_DAY"), buffer) == "12:30:45.120"
    assert encode(visitor("TIME_OF_DAY"), "12:30:45.12") == bytes(buffer)


def test_string_keeps_its_header() -> None:
    buffer = bytearray(12)
    reference.set_string(buffer, 0, "Läuft", 10)
    assert decode(visitor("STRING", length=10), buffer) == "Läuft"
    assert encode(visitor("STRING", length=10), "Läuft") == bytes(buffer[1:7])  # not the maximum-length byte
    with pytest.raises(CodecError, match=r"declares STRING\[10\] there, the visitor length is 20"):
        decode(visitor("STRING", length=20), buffer)
    buffer[1] = 11
    with pytest.raises(CodecError, match="current length 11 exceeds its maximum 10"):
        decode(visitor("STRING", length=10), buffer)


@pytest.mark.parametrize(("kind", "value", "message"), [
    ("INT", 40000, "does not fit INT"),
    ("BYTE", -1, "does not fit BYTE"),
    ("DINT", 1.5, "not a whole number"),
    ("REAL", 1e39, "does not fit REAL"),
    ("STRING", "x" * 11, r"11 characters do not fit STRING\[10\]"),
    ("STRING", "€uro", "not a character an S7 STRING holds"),
    ("DATE", "yesterday", "expected a date YYYY-MM-DD"),
    ("DATE", "1989-12-31", "DATE holds 1990-01-01"),
    ("DATE_AND_TIME", "2099-01-01T00:00:00", "years 1990-2089"),
    ("DTL", "2024-03-05T12:30:45+02:00", "names a time zone"),
])
def test_values_that_do_not_fit_are_refused(kind: str, value: Any, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode(visitor(kind, **({"length": 10} if kind == "STRING" else {})), value)


def test_a_range_decodes_numbers_in_one_call_and_the_rest_one_by_one() -> None:
    fields = [("t", visitor("REAL"), 0), ("n", visitor("DINT"), 6), ("b", visitor("BOOL", bit=2), 4),
              ("w", visitor("WORD"), 6), ("d", visitor("DATE_AND_TIME", offset=10), 10)]
    decoder = RangeDecoder(fields)
    assert decoder.numbers == ["t", "n"]  # the WORD overlaps the DINT: decoded on its own
    data = struct.pack(">fBBi", 1.5, 0b100, 0, -5) + b"\x99\x99\x99\x99\x99\x99\x99\x99"
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    decoder.decode(data, values, errors)
    assert values == {"t": 1.5, "n": -5, "b": True, "w": 0xFFFF}
    assert errors == {"d": "DB1.DBB10 (DATE_AND_TIME): not a date and time: month must be in 1..12"}
