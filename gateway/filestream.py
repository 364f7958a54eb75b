"""File bytes on a channel byte stream (gateway.channel), both sides: the node's gateway.uplink.files and the
registry's gateway.registry.filestreams.

Every file request of a node whose channel is up is one stream of kind FILE_STREAM that the node opens, its meta a
FileStreamRequest. `offers`, `progress`, `announce` and `status` get one reply each; `get` and `put` carry the bytes:

- `get` (cloud → edge): the registry sends the file from `offset` to its end as *pieces*, each FILE_PIECE bytes of
  the file (the last one shorter) followed by their SHA-256 (32 bytes, raw). The node checks each piece before it
  writes it and fsyncs every FILE_ACK bytes; a stream that breaks costs the piece it was in, and the node asks again
  from the end of the last whole piece it wrote.
- `put` (edge → cloud): the registry first replies with the offset it holds (its part's size, written and
  fsynced), the node sends pieces from there; the registry checks each, appends them to the part, fsyncs every
  FILE_ACK bytes (and when the stream ends, however it ends) and replies with its new offset each time, then with
  the final state once the file is whole and its SHA-256 checked.

A reply is 4 bytes (big-endian length) and JSON. The registry ends a stream with an error that starts with REFUSED
for a request it refuses (the node gives up on that request, as for an HTTPS 4xx) and with CORRUPTED for a piece
that does not match its SHA-256 (nothing of it is kept; it goes again); any other end is a dropped link.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any, TypeVar

import msgspec

from gateway.channel import Stream, StreamError
from gateway.wire import FILE_PIECE, MAX_FILE_REPLY

DIGEST = 32  # bytes of a piece's SHA-256
REFUSED = "refused: "
CORRUPTED = "corrupted: "
_LENGTH = struct.Struct(">I")
T = TypeVar("T")


def frame_pieces(data: bytes) -> list[bytes]:
    """`data` cut into pieces, each followed by its SHA-256 (run in a thread: hashing a MiB takes milliseconds)."""
    return [(piece := data[start:start + FILE_PIECE]) + hashlib.sha256(piece).digest()
            for start in range(0, len(data), FILE_PIECE)]


def check_pieces(framed: list[bytes]) -> tuple[list[bytes], int | None]:
    """The data of the pieces up to the first whose SHA-256 is wrong, and that piece's index (None: all good)."""
    good: list[bytes] = []
    for index, raw in enumerate(framed):
        piece, digest = raw[:-DIGEST], raw[-DIGEST:]
        if hashlib.sha256(piece).digest() != digest:
            return good, index
        good.append(piece)
    return good, None


class PieceReader:
    """Reads framed pieces off a stream, however its frames cut them; `taken` counts the file bytes received (a cut
    piece's too), not the digests of the whole pieces."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.received = 0
        self.pieces = 0

    @property
    def taken(self) -> int:
        return self.received - DIGEST * self.pieces

    async def piece(self, size: int) -> bytes:
        """The next piece of `size` data bytes, with its digest (not checked); StreamError when the stream ends
        first."""
        need = size + DIGEST
        while len(self.buffer) < need:
            chunk = await self.stream.receive()
            if not chunk:
                raise StreamError(f"stream {self.stream.kind} {self.stream.id}: ended inside a piece")
            self.received += len(chunk)
            self.buffer += chunk
        self.pieces += 1
        raw = bytes(self.buffer[:need])
        del self.buffer[:need]
        return raw


async def send_reply(stream: Stream, reply: Any) -> None:
    data = msgspec.json.encode(reply)
    await stream.send(_LENGTH.pack(len(data)) + data)


async def read_reply(stream: Stream, reader: PieceReader, kind: type[T]) -> T | None:
    """The next reply on a stream (None once it ended); StreamError when aborted, ChannelError for a bad reply."""
    from gateway.channel import ChannelError

    while len(reader.buffer) < _LENGTH.size:
        chunk = await stream.receive()
        if not chunk:
            if reader.buffer:
                raise ChannelError("a file stream ended inside a reply")
            return None
        reader.buffer += chunk
    (length,) = _LENGTH.unpack(reader.buffer[:_LENGTH.size])
    if length > MAX_FILE_REPLY:
        raise ChannelError(f"a file stream reply of {length} bytes, over {MAX_FILE_REPLY}")
    while len(reader.buffer) < _LENGTH.size + length:
        chunk = await stream.receive()
        if not chunk:
            raise ChannelError("a file stream ended inside a reply")
        reader.buffer += chunk
    data = bytes(reader.buffer[_LENGTH.size:_LENGTH.size + length])
    del reader.buffer[:_LENGTH.size + length]
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ChannelError(f"a bad file stream reply: {exc}") from None
