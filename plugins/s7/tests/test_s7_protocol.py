"""The s7 protocol against the snap7 server (the native library, in its own process): planned reads counted on the
wire, exact values, writes read back from the PLC's memory, refusals and hangs as clear errors."""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
import snap7.util as reference
from layout import STRING_LENGTH, memory, used_bytes, variables
from s7_helpers import CountingProxy, PlcServer, bind

from gateway.errors import DeviceTimeout, ProtocolError

Plc = Callable[..., PlcServer]


async def connected(proxy: Callable[..., Any], server: PlcServer, visitors: dict[str, dict[str, Any]],
                    **config: Any) -> tuple[Any, CountingProxy]:
    counting = await proxy(server.port)
    protocol = bind({"host": "127.0.0.1", "port": counting.port, "timeout": 2.0, **config}, visitors)
    await protocol.open()
    return protocol, counting


@pytest.mark.parametrize("pdu_size", [480, 240])
async def test_200_variables_across_3_dbs_are_read_exactly_in_the_fewest_requests(
        plc: Plc, proxy: Callable[..., Any], pdu_size: int) -> None:
    layout = variables(200)
    server = plc({"DB1": 1024, "DB2": 1024, "DB3": 1024})
    for db, data in memory(layout).items():
        server.set(f"DB{db}", 0, bytes(data))
    protocol, counting = await connected(proxy, server, {v.name: v.visitor() for v in layout}, pdu_size=pdu_size)
    try:
        pdu = protocol.pdu
        assert pdu == pdu_size  # what the server granted
        plan = protocol.plan(list(protocol.device.properties.values()))
        counting.reset()
        result = await protocol.read(plan)
        assert result.errors == {}
        assert result.values == {v.name: v.value for v in layout}  # REAL, DINT, BOOL, STRING … exact
        # every answer carries at most pdu - 14 bytes of items, each with a 4-byte header
        fewest = math.ceil((used_bytes(layout) + 4 * 3) / (pdu - 14))
        assert counting.reads == fewest, counting.read_items
        assert counting.longest_answer <= pdu
        assert max(counting.read_items) <= 20
        await protocol.read(plan)  # the plan is made once and read again as it is
        assert counting.reads == 2 * fewest
        assert counting.functions.keys() == {0x04}
    finally:
        await protocol.close()


async def test_writes_land_in_the_plc_memory(plc: Plc, proxy: Callable[..., Any]) -> None:
    server = plc({"DB1": 64, "M": 32, "Q": 8})
    server.set("DB1", 20, bytes([STRING_LENGTH, 0]))  # the PLC's declaration of STRING[10]
    visitors = {
        "real": {"db": 1, "offset": 0, "type": "REAL"}, "dint": {"db": 1, "offset": 4, "type": "DINT"},
        "lreal": {"db": 1, "offset": 8, "type": "LREAL"}, "int": {"db": 1, "offset": 16, "type": "INT"},
        "word": {"db": 1, "offset": 18, "type": "WORD"},
        "text": {"db": 1, "offset": 20, "type": "STRING", "length": STRING_LENGTH},
        "dtl": {"db": 1, "offset": 32, "type": "DTL"}, "dt": {"db": 1, "offset": 44, "type": "DATE_AND_TIME"},
        "date": {"db": 1, "offset": 52, "type": "DATE"},
        "flag_word": {"area": "M", "offset": 10, "type": "INT"}, "output": {"area": "Q", "offset": 2, "type": "BOOL",
                                                                              "bit": 6},
    }
    protocol, _ = await connected(proxy, server, visitors)
    props = protocol.device.properties
    wanted = {"real": -21.25, "dint": -123456789, "lreal": 1.0e-9, "int": -300, "word": 0xBEEF, "text": "Öl 7",
              "dtl": "2024-03-05T12:30:45.5", "dt": "2023-12-31T23:59:59.999", "date": "2024-02-29",
              "flag_word": 4242, "output": True}
    try:
        for name, value in wanted.items():
            await protocol.write(props[name], value)
        db = bytearray(server.get("DB1", 0, 64))
        assert struct.unpack_from(">fid", db, 0) == (-21.25, -123456789, 1.0e-9)
        assert struct.unpack_from(">hH", db, 16) == (-300, 0xBEEF)
        assert reference.get_string(db, 20) == "Öl 7" and db[20] == STRING_LENGTH  # the header's maximum kept
        assert reference.get_dtl(db, 32).isoformat() == "2024-03-05T12:30:45.500000"
        assert reference.get_dt(db, 44) == "2023-12-31T23:59:59.999000"
        assert reference.get_date(db, 52).isoformat() == "2024-02-29"
        assert struct.unpack(">h", server.get("M", 10, 2)) == (4242,)
        assert server.get("Q", 2, 1) == bytes([1 << 6])
        result = await protocol.read(protocol.plan(list(props.values())))
        assert result.errors == {}
        assert result.values == {**wanted, "dtl": "2024-03-05T12:30:45.500", "dt": "2023-12-31T23:59:59.999"}
    finally:
        await protocol.close()


async def test_a_bool_write_changes_its_bit_only(plc: Plc, proxy: Callable[..., Any]) -> None:
    server = plc({"DB1": 8})
    server.set("DB1", 3, bytes([0b1010_0101]))
    visitors = {f"bit{i}": {"db": 1, "offset": 3, "type": "BOOL", "bit": i} for i in range(8)}
    protocol, counting = await connected(proxy, server, visitors)
    props = protocol.device.properties
    try:
        await protocol.write(props["bit1"], True)
        server.set("DB1", 3, bytes([server.get("DB1", 3, 1)[0] ^ 0b1000_0000]))  # the PLC program's own change
        await protocol.write(props["bit5"], False)
        assert server.get("DB1", 3, 1) == bytes([0b0000_0111])
        assert counting.functions[0x04] == 0  # no read-modify-write: the PLC sets the one bit
        result = await protocol.read(protocol.plan(list(props.values())))
        assert [result.values[f"bit{i}"] for i in range(8)] == [True, True, True, False, False, False, False, False]
    finally:
        await protocol.close()


async def test_a_misconfigured_visitor_is_a_clear_error_of_its_property_only(
        plc: Plc, proxy: Callable[..., Any]) -> None:
    server = plc({"DB1": 16, "DB2": 16})
    server.set("DB1", 0, struct.pack(">fh", 1.5, 7))
    server.set("DB2", 0, bytes([4, 2]) + b"ok")
    visitors = {
        "level": {"db": 1, "offset": 0, "type": "REAL"},
        "count": {"db": 1, "offset": 4, "type": "INT"},
        "past_the_end": {"db": 1, "offset": 14, "type": "REAL"},  # DB1 has 16 bytes: merged with the two above
        "no_such_db": {"db": 7, "offset": 0, "type": "INT"},
        "wrong_length": {"db": 2, "offset": 0, "type": "STRING", "length": 8},  # the PLC declares STRING[4]
    }
    protocol, counting = await connected(proxy, server, visitors)
    try:
        plan = protocol.plan(list(protocol.device.properties.values()))
        for _ in range(2):
            result = await protocol.read(plan)
            assert result.values == {"level": 1.5, "count": 7}
            assert result.errors == {
                "past_the_end": "DB1.DBD14 (REAL): the PLC refused it: address out of range (return code 0x05)",
                "no_such_db": "DB7.DBW0 (INT): the PLC refused it: object does not exist (return code 0x0a)",
                "wrong_length": "DB2.DBB0 (STRING[8]): the PLC's header declares STRING[4] there, the visitor "
                                "length is 8",
            }
        counting.reset()
        await protocol.read(plan)
        assert counting.reads == 1  # the bad property is read on its own now, in the same request
        with pytest.raises(ProtocolError, match=r"writing past_the_end to DB1.DBD14 \(REAL\): the PLC refused it: "
                                                r"address out of range"):
            await protocol.write(protocol.device.properties["past_the_end"], 2.0)
        with pytest.raises(ProtocolError, match="40000 does not fit INT"):
            await protocol.write(protocol.device.properties["count"], 40000)
    finally:
        await protocol.close()


async def test_a_plc_that_stops_answering_times_out_and_closes_at_once(
        plc: Plc, proxy: Callable[..., Any]) -> None:
    server = plc({"DB1": 16})
    protocol, counting = await connected(proxy, server, {"level": {"db": 1, "offset": 0, "type": "REAL"}},
                                         timeout=0.5)
    plan = protocol.plan(list(protocol.device.properties.values()))
    assert (await protocol.read(plan)).values == {"level": 0.0}
    counting.stall = True
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match=r"read request 1 of 1 \(1 variable\): no answer within 0.5s"):
        await protocol.read(plan)
    await asyncio.wait_for(protocol.close(), 2)
    assert time.monotonic() - started < 2.5
    with pytest.raises(ProtocolError, match="not connected"):
        await protocol.read(plan)


async def test_no_plc_at_the_address_is_a_clear_error() -> None:
    from gateway.testing import free_port

    protocol = bind({"host": "127.0.0.1", "port": free_port(), "timeout": 1.0},
                    {"level": {"db": 1, "offset": 0, "type": "REAL"}})
    with pytest.raises(ProtocolError, match=r"127.0.0.1:\d+: cannot connect"):
        await protocol.open()
    await protocol.close()
