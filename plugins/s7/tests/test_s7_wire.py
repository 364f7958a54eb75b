"""Answers taken apart: a refused item is its return code, anything garbled is a ProtocolError and nothing else."""

from __future__ import annotations

import struct

import pytest
from fieldgate_s7.wire import READ, Refused, parse_answer, read_items
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import ProtocolError


def answer(sequence: int, items: bytes, count: int, *, error: int = 0) -> bytes:
    return struct.pack(">BBHHHHH", 0x32, 0x03, 0, sequence, 2, len(items), error) + bytes([READ, count]) + items


def test_items_with_fill_bytes_and_refusals() -> None:
    items = b"\xff\x04\x00\x18abc\x00" + b"\x05\x00\x00\x00" + b"\xff\x09\x00\x02xy"
    count, _, data = parse_answer(answer(7, items, 3), READ, 7)
    assert read_items(data, count) == [b"abc", 5, b"xy"]


def test_a_refused_request_and_a_stray_answer() -> None:
    with pytest.raises(Refused, match=r"the PLC refused the request: .* \(0x8104\)"):
        parse_answer(answer(1, b"", 0, error=0x8104), READ, 1)
    with pytest.raises(ProtocolError, match="answer to request 2 while waiting for 1"):
        parse_answer(answer(2, b"", 0), READ, 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=80), st.integers(0, 25))
def test_garbage_is_a_protocol_error(garbage: bytes, count: int) -> None:
    for pdu in (garbage, answer(1, garbage, count)):
        try:
            items, _, data = parse_answer(pdu, READ, 1)
            read_items(data, items)
        except ProtocolError:
            pass
