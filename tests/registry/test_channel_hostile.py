"""What faces the outside on the channel: the frame decoder and a live registry's channel endpoint, fed arbitrary and
mutated frames (bad msgpack, wrong tags, oversized fields, unknown kinds, stream ids out of range, credit abuse), and
the twin-report rate limit, which holds over the channel as over HTTPS.

Whatever a node sends, its own connection either goes on or closes cleanly with a reason (WebSocket close 1002, or
1008 with a Refused frame before Hello), the registry process stays up, and another node's channel keeps answering.
Example counts are bounded so the file runs in seconds."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.channel import PROBE_KIND, ChannelError, decode_frame, encode_frame
from gateway.uplink.join import client_ssl_context
from gateway.wire import (
    CHANNEL_PATH,
    MAX_STREAM_CHUNK,
    Ack,
    Answer,
    DeviceReport,
    Heartbeat,
    HeartbeatAnswer,
    HeartbeatRequest,
    Hello,
    PropertyReport,
    Refused,
    StreamCredit,
    StreamData,
    StreamEnd,
    StreamOpen,
    Welcome,
)
from tests.registry.conftest import Registry, join, stop

TAGS = ["hello", "welcome", "refused", "heartbeat", "heartbeat-answer", "push", "ack", "answer", "stream-open",
        "stream-data", "stream-credit", "stream-end", "no-such-kind", ""]
INTS = st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), st.sampled_from([0, -1, 1, 2, (1 << 64) - 1, -(1 << 63)]))
VALUES = st.recursive(st.one_of(st.none(), st.booleans(), INTS, st.floats(allow_nan=True), st.text(max_size=40),
                                st.binary(max_size=40)),
                      lambda inner: st.one_of(st.lists(inner, max_size=4),
                                              st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=12)
FIELDS = ["seq", "stream", "kind", "meta", "data", "credit", "error", "body", "request", "path", "messages",
          "desired_ack", "resource_version", "documents", "desired", "version", "reason", "node"]


def valid_frames() -> list[Any]:
    report = DeviceReport(device="default/x", state="online", properties={"p": PropertyReport(reported=1)})
    return [Hello(), Heartbeat(seq=1, body=HeartbeatRequest()),
            Heartbeat(seq=2, body=HeartbeatRequest(twins=[report])), Ack(seq=1, messages=["abc"]),
            Answer(seq=1, request="0123456789abcdef", path="logs", body=b"{}"),
            StreamOpen(stream=1, kind=PROBE_KIND), StreamData(stream=1, data=b"x" * 10),
            StreamCredit(stream=1, credit=5), StreamEnd(stream=1), StreamEnd(stream=1, error="why")]


@st.composite
def tagged_maps(draw: st.DrawFn) -> bytes:
    """A msgpack map with a known (or unknown) tag and fields of any type."""
    fields = draw(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=5))
    return msgspec.msgpack.encode({"t": draw(st.sampled_from(TAGS)), **fields})


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid frame with one field replaced, or its bytes flipped, cut or grown."""
    frame = draw(st.sampled_from(valid_frames()))
    raw = msgspec.to_builtins(frame)
    how = draw(st.sampled_from(["field", "flip", "cut", "grow"]))
    if how == "field":
        raw[draw(st.sampled_from(FIELDS))] = draw(st.one_of(VALUES, st.just("k" * 200), st.just(b"d" * 40000)))
        return msgspec.msgpack.encode(raw)
    data = bytearray(encode_frame(frame))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
    elif how == "cut":
        del data[draw(st.integers(0, len(data) - 1)):]
    else:
        data += draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


ANY_FRAME = st.one_of(st.binary(max_size=200), tagged_maps(), mutated())


@given(ANY_FRAME)
@settings(max_examples=400, deadline=None)
def test_the_decoder_takes_any_bytes_as_a_frame_or_a_channel_error(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except ChannelError as exc:
        assert str(exc).startswith("bad frame")
        return
    assert frame is None or type(frame).__name__ in {cls.__name__ for cls in map(type, valid_frames())} | {
        "Welcome", "Refused", "HeartbeatAnswer", "Push"}


# --- a live registry ----------------------------------------------------------------------------------------------


class Link:
    """One node's WebSocket to the registry's channel (websockets client, mutual TLS)."""

    def __init__(self, registry: Registry, context: ssl.SSLContext) -> None:
        self.url = f"wss://127.0.0.1:{registry.port}{CHANNEL_PATH}"
        self.context = context
        self.socket: Any = None
        self.seq = 1000

    async def open(self) -> None:
        from websockets.asyncio.client import connect

        self.socket = await connect(self.url, ssl=self.context, open_timeout=10, compression=None, ping_interval=None,
                                    max_size=None)
        await self.socket.send(encode_frame(Hello()))
        assert isinstance(decode_frame(await self.socket.recv()), Welcome)

    async def heartbeat(self, twins: list[DeviceReport] | None = None) -> HeartbeatAnswer:
        """A heartbeat frame and its answer (pushes and acks on the way are skipped)."""
        self.seq += 1
        await self.socket.send(encode_frame(Heartbeat(seq=self.seq, body=HeartbeatRequest(twins=twins))))
        async with asyncio.timeout(10):
            while True:
                frame = decode_frame(await self.socket.recv())
                if isinstance(frame, HeartbeatAnswer) and frame.seq == self.seq:
                    return frame

    async def close(self) -> None:
        if self.socket is not None:
            await self.socket.close()


class Fleet:
    def __init__(self, registry: Registry, tmp_path: Path) -> None:
        self.registry = registry
        self.contexts = {}
        for name in ("gw-a", "gw-b"):
            data_dir = tmp_path / name
            assert join(registry, registry.token(), data_dir, "--name", name).returncode == 0
            self.contexts[name] = client_ssl_context(data_dir)
        self.loop = asyncio.new_event_loop()
        self.bystander = Link(registry, self.contexts["gw-b"])
        self.loop.run_until_complete(self.bystander.open())

    def close(self) -> None:
        self.loop.run_until_complete(self.bystander.close())
        self.loop.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp_path = tmp_path_factory.mktemp("channel-hostile")
    registry = Registry(tmp_path / "registry")
    registry.start()
    try:
        started = Fleet(registry, tmp_path)
        yield started
        started.close()
    finally:
        if registry.process is not None:
            stop(registry.process)


async def _send_hostile(fleet: Fleet, frames: list[bytes]) -> tuple[str, int | None, str]:
    """Open gw-a's channel, send the frames, then a heartbeat: ("answered", None, "") when the connection goes on,
    ("closed", code, reason) when the registry closed it."""
    from websockets.exceptions import ConnectionClosed

    link = Link(fleet.registry, fleet.contexts["gw-a"])
    await link.open()
    try:
        for data in frames:
            await link.socket.send(data)
        await link.heartbeat()
        return "answered", None, ""
    except ConnectionClosed as exc:
        received = exc.rcvd
        return "closed", received.code if received else None, received.reason if received else ""
    finally:
        await link.close()


@given(st.lists(ANY_FRAME, min_size=1, max_size=3))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
def test_hostile_frames_close_only_the_senders_channel_and_with_a_reason(fleet: Fleet, frames: list[bytes]) -> None:
    outcome, code, reason = fleet.loop.run_until_complete(_send_hostile(fleet, frames))
    if outcome == "closed":
        assert code == 1002 and reason, (code, reason, frames)
    # the other node's channel goes on, and the registry process is up
    assert fleet.loop.run_until_complete(fleet.bystander.heartbeat()).body is not None
    assert fleet.registry.process is not None and fleet.registry.process.poll() is None


def test_stream_abuse_is_a_protocol_error_named_in_the_close(fleet: Fleet) -> None:
    # (data beyond the credit granted: tests/test_channel.py, where the reader can be held; the registry's discard
    # stream reads as fast as data comes)
    cases = {
        "an id the node may not open": [StreamOpen(stream=2, kind=PROBE_KIND)],
        "an id opened twice": [StreamOpen(stream=3, kind=PROBE_KIND), StreamOpen(stream=3, kind=PROBE_KIND)],
    }
    for what, frames in cases.items():
        outcome, code, reason = fleet.loop.run_until_complete(_send_hostile(fleet, [encode_frame(f) for f in frames]))
        assert (outcome, code) == ("closed", 1002), what
        assert reason.startswith("stream"), (what, reason)
    # credit out of range, data for streams that are not open, an unknown stream kind: refused or ignored, no close
    harmless = [StreamCredit(stream=(1 << 64) - 1, credit=1 << 62), StreamData(stream=7, data=b"x"),
                StreamEnd(stream=-5), StreamOpen(stream=5, kind="no-such-kind"), StreamOpen(stream=9, kind=PROBE_KIND),
                StreamCredit(stream=9, credit=(1 << 64) - 1), StreamCredit(stream=9, credit=(1 << 64) - 1),
                *[StreamData(stream=9, data=bytes(MAX_STREAM_CHUNK))] * 4]
    assert fleet.loop.run_until_complete(_send_hostile(fleet, [encode_frame(f) for f in harmless]))[0] == "answered"


def test_a_first_frame_that_is_not_hello_is_refused_with_the_reason(fleet: Fleet) -> None:
    from websockets.asyncio.client import connect

    async def first(data: bytes) -> Any:
        async with connect(f"wss://127.0.0.1:{fleet.registry.port}{CHANNEL_PATH}", ssl=fleet.contexts["gw-a"],
                           open_timeout=10) as socket:
            await socket.send(data)
            return decode_frame(await socket.recv())

    for data in (b"\xc1", encode_frame(Heartbeat(seq=1, body=HeartbeatRequest())), b""):
        refused = fleet.loop.run_until_complete(first(data))
        assert isinstance(refused, Refused) and refused.reason.startswith("no Hello"), refused


# --- the twin-report rate limit ------------------------------------------------------------------------------------


def test_twin_reports_over_the_channel_keep_the_registrys_rate_limit(fleet: Fleet) -> None:
    """As over HTTPS: a report sooner than half MIN_REPORT_INTERVAL after the node's last is refused (429, the
    reason), nothing of it is stored, a heartbeat without twins is taken, and the limit is one for both ways in."""
    from gateway.wire import MIN_REPORT_INTERVAL

    viewer = fleet.registry.cli("token", "create", "--role", "viewer").stdout.strip()

    def reported() -> Any:
        verify = ssl.create_default_context(cafile=str(fleet.registry.data_dir / "ca.pem"))
        with httpx.Client(base_url=fleet.registry.url, verify=verify, timeout=10,
                          headers={"Authorization": f"Bearer {viewer}"}) as client:
            answer = client.get("/api/v1/devices/default/limited")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def report(value: int) -> list[DeviceReport]:
        return [DeviceReport(device="default/limited", state="online",
                             properties={"p": PropertyReport(reported=value, quality="good")})]

    async def run() -> None:
        link = Link(fleet.registry, fleet.contexts["gw-a"])
        await link.open()
        try:
            await asyncio.sleep(MIN_REPORT_INTERVAL)  # after any report of the earlier tests
            first = await link.heartbeat(report(1))
            assert first.body is not None and first.refused is None
            too_soon = await link.heartbeat(report(2))
            assert too_soon.body is None and too_soon.status == 429 and "more often" in (too_soon.refused or "")
            assert (await link.heartbeat()).body is not None  # without twins: taken
            async with httpx.AsyncClient(base_url=fleet.registry.url, verify=fleet.contexts["gw-a"],
                                         timeout=10) as client:
                https = await client.post("/api/v1/heartbeat", json={"twins": [msgspec.to_builtins(report(3)[0])]})
            assert https.status_code == 429, https.text  # the channel's report counts over HTTPS too
            await asyncio.sleep(MIN_REPORT_INTERVAL)
            later = await link.heartbeat(report(4))
            assert later.body is not None and later.refused is None
        finally:
            await link.close()

    fleet.loop.run_until_complete(run())
    twin = reported()
    assert twin["node"] == "gw-a"
    assert twin["twin"]["p"]["reported"] == 4, twin  # 2 and 3 were refused; 4 came after the interval
