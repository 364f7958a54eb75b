"""S7 values to and from their big-endian bytes: numbers, BOOL bits, STRING with its header, dates and times."""

from __future__ import annotations

import datetime as dt
import re
import struct
from collections.abc import Sequence
from typing import Any

from fieldgate_s7.config import STRING_MAX, S7Visitor
from gateway.errors import CodecError

# struct codes of the fixed-size numbers: one Struct per merged range decodes all of them in one call
STRUCT_CODES: dict[str, str] = {
    "BYTE": "B", "USINT": "B", "SINT": "b", "WORD": "H", "UINT": "H", "INT": "h", "DWORD": "I", "UDINT": "I",
    "DINT": "i", "TIME": "i", "LWORD": "Q", "ULINT": "Q", "LINT": "q", "REAL": "f", "LREAL": "d",
}
_FORMATS = {name: struct.Struct(">" + code) for name, code in STRUCT_CODES.items()}
_DATE_ZERO = dt.date(1990, 1, 1)
_MAX_DATE = _DATE_ZERO + dt.timedelta(days=0xFFFF)
ENCODING = "latin-1"  # S7 STRING characters are single bytes


# --- reading ----------------------------------------------------------------------------------------------------


def _bcd(byte: int) -> int:
    high, low = byte >> 4, byte & 0x0F
    if high > 9 or low > 9:
        raise CodecError(f"byte 0x{byte:02x} is not BCD")
    return high * 10 + low


def _string(data: bytes | bytearray, at: int, visitor: S7Visitor) -> str:
    declared = visitor.length or STRING_MAX
    maximum, current = data[at], data[at + 1]
    if maximum != declared:
        raise CodecError(f"the PLC's header declares STRING[{maximum}] there, the visitor length is {declared}")
    if current > maximum:
        raise CodecError(f"the header's current length {current} exceeds its maximum {maximum}")
    return bytes(data[at + 2 : at + 2 + current]).decode(ENCODING)


def _date(data: bytes | bytearray, at: int) -> str:
    return (_DATE_ZERO + dt.timedelta(days=int.from_bytes(data[at : at + 2], "big"))).isoformat()


def _time_of_day(data: bytes | bytearray, at: int) -> str:
    ms = int.from_bytes(data[at : at + 4], "big")
    if ms >= 86_400_000:
        raise CodecError(f"{ms} ms is past the end of a day")
    return _clock(ms // 1000, ms % 1000 * 1_000_000)


def _clock(seconds: int, nanoseconds: int) -> str:
    text = f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    if nanoseconds:
        text += "." + f"{nanoseconds:09d}".rstrip("0").ljust(3, "0")
    return text


def _stamp(year: int, month: int, day: int, hour: int, minute: int, second: int, nanoseconds: int) -> str:
    try:
        dt.datetime(year, month, day, hour, minute, second)
    except ValueError as exc:
        raise CodecError(f"not a date and time: {exc}") from None
    return f"{year:04d}-{month:02d}-{day:02d}T{_clock(hour * 3600 + minute * 60 + second, nanoseconds)}"


def _date_and_time(data: bytes | bytearray, at: int) -> str:
    b = data[at : at + 8]
    year = _bcd(b[0])
    ms = _bcd(b[6]) * 10 + (b[7] >> 4)
    if b[7] >> 4 > 9:
        raise CodecError(f"byte 0x{b[7]:02x} is not BCD")
    return _stamp(year + (1900 if year >= 90 else 2000), _bcd(b[1]), _bcd(b[2]), _bcd(b[3]), _bcd(b[4]), _bcd(b[5]),
                  ms * 1_000_000)


def _dtl(data: bytes | bytearray, at: int) -> str:
    year, month, day, _weekday, hour, minute, second, nanoseconds = struct.unpack_from(">HBBBBBBI", data, at)
    if nanoseconds > 999_999_999:
        raise CodecError(f"{nanoseconds} ns is more than a second")
    return _stamp(year, month, day, hour, minute, second, nanoseconds)


def decode(visitor: S7Visitor, data: bytes | bytearray, at: int = 0) -> Any:
    """The value of `visitor` in `data` at byte `at`."""
    kind = visitor.type
    fmt = _FORMATS.get(kind)
    if fmt is not None:
        return fmt.unpack_from(data, at)[0]
    if kind == "BOOL":
        return bool(data[at] >> (visitor.bit or 0) & 1)
    if kind == "STRING":
        return _string(data, at, visitor)
    if kind == "DATE":
        return _date(data, at)
    if kind == "TIME_OF_DAY":
        return _time_of_day(data, at)
    if kind == "DATE_AND_TIME":
        return _date_and_time(data, at)
    return _dtl(data, at)


class RangeDecoder:
    """Decodes the properties of one merged range: the fixed-size numbers that do not overlap in one struct call,
    the rest (bits, strings, dates, overlapping visitors) one by one."""

    def __init__(self, fields: Sequence[tuple[str, S7Visitor, int]]) -> None:
        fmt, end = ">", 0
        self.numbers: list[str] = []
        self.others: list[tuple[str, S7Visitor, int]] = []
        for name, visitor, at in sorted(fields, key=lambda f: f[2]):
            code = STRUCT_CODES.get(visitor.type)
            if code is not None and at >= end:
                fmt += (f"{at - end}x" if at > end else "") + code
                end = at + visitor.size
                self.numbers.append(name)
            else:
                self.others.append((name, visitor, at))
        self.struct = struct.Struct(fmt) if self.numbers else None

    def decode(self, data: bytes | bytearray, values: dict[str, Any], errors: dict[str, str]) -> None:
        if self.struct is not None:
            values.update(zip(self.numbers, self.struct.unpack_from(data), strict=True))
        for name, visitor, at in self.others:
            try:
                values[name] = decode(visitor, data, at)
            except (CodecError, UnicodeDecodeError, struct.error) as exc:
                errors[name] = f"{visitor.address()}: {exc}"


# --- writing ----------------------------------------------------------------------------------------------------

_FRACTION = re.compile(r"^(.*?)(?:\.(\d{1,9}))?$")


def _parse_clock(text: str) -> tuple[dt.time, int]:
    """A local time of day with up to nanoseconds."""
    match = _FRACTION.match(text.strip())
    assert match is not None
    base, fraction = match.group(1), match.group(2) or ""
    try:
        moment = dt.time.fromisoformat(base)
    except ValueError:
        raise CodecError(f"expected a time of day HH:MM:SS[.fff], got {text!r}") from None
    if moment.tzinfo is not None:
        raise CodecError(f"{text!r} names a time zone; the PLC keeps local time without one")
    return moment, int(fraction.ljust(9, "0")) if fraction else 0


def _parse_stamp(text: str) -> tuple[dt.datetime, int]:
    value = str(text).strip()
    day, sep, clock = value.replace(" ", "T", 1).partition("T")
    try:
        date = dt.date.fromisoformat(day)
    except ValueError:
        raise CodecError(f"expected a date and time YYYY-MM-DDTHH:MM:SS[.fff], got {text!r}") from None
    moment, nanoseconds = _parse_clock(clock) if sep else (dt.time(), 0)
    return dt.datetime.combine(date, moment.replace(microsecond=0)), nanoseconds


def _to_bcd(number: int) -> int:
    return (number // 10) << 4 | number % 10


def encode(visitor: S7Visitor, value: Any) -> bytes:
    """The bytes of `value` (already of the model's type) as the PLC keeps them; STRING without its maximum-length
    byte, which belongs to the PLC's declaration and is left as it is."""
    kind = visitor.type
    fmt = _FORMATS.get(kind)
    try:
        if fmt is not None:
            if kind not in ("REAL", "LREAL") and isinstance(value, float):
                if value != int(value):
                    raise CodecError(f"{value!r} is not a whole number for {kind}")
                value = int(value)
            return fmt.pack(value)
        if kind == "BOOL":
            return b"\x01" if value else b"\x00"
        if kind == "STRING":
            return _encode_string(visitor, str(value))
        if kind == "DATE":
            return _encode_date(str(value))
        if kind == "TIME_OF_DAY":
            moment, nanoseconds = _parse_clock(str(value))
            ms = (moment.hour * 3600 + moment.minute * 60 + moment.second) * 1000 + nanoseconds // 1_000_000
            return ms.to_bytes(4, "big")
        stamp, nanoseconds = _parse_stamp(str(value))
        if kind == "DATE_AND_TIME":
            if not 1990 <= stamp.year <= 2089:
                raise CodecError(f"DATE_AND_TIME holds the years 1990-2089, not {stamp.year}")
            ms = nanoseconds // 1_000_000
            weekday = stamp.isoweekday() % 7 + 1  # 1 = Sunday
            return bytes([_to_bcd(stamp.year % 100), _to_bcd(stamp.month), _to_bcd(stamp.day), _to_bcd(stamp.hour),
                          _to_bcd(stamp.minute), _to_bcd(stamp.second), _to_bcd(ms // 10),
                          (ms % 10) << 4 | weekday])
        if not 1970 <= stamp.year <= 2262:
            raise CodecError(f"DTL holds the years 1970-2262, not {stamp.year}")
        return struct.pack(">HBBBBBBI", stamp.year, stamp.month, stamp.day, stamp.isoweekday() % 7 + 1, stamp.hour,
                           stamp.minute, stamp.second, nanoseconds)
    except (struct.error, OverflowError) as exc:
        raise CodecError(f"{value!r} does not fit {kind}: {exc}") from None


def _encode_string(visitor: S7Visitor, text: str) -> bytes:
    declared = visitor.length or STRING_MAX
    try:
        raw = text.encode(ENCODING)
    except UnicodeEncodeError as exc:
        raise CodecError(f"{text[exc.start:exc.end]!r} is not a character an S7 STRING holds ({ENCODING})") from None
    if len(raw) > declared:
        raise CodecError(f"{len(raw)} characters do not fit STRING[{declared}]")
    return bytes([len(raw)]) + raw


def _encode_date(text: str) -> bytes:
    try:
        day = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise CodecError(f"expected a date YYYY-MM-DD, got {text!r}") from None
    if not _DATE_ZERO <= day <= _MAX_DATE:
        raise CodecError(f"DATE holds {_DATE_ZERO} to {_MAX_DATE}, not {day}")
    return (day - _DATE_ZERO).days.to_bytes(2, "big")
