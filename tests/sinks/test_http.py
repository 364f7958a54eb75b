"""The http sink against a real HTTP server on loopback: what it posts for payloads that are JSON and that are not."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from gateway.sinks.base import OutboxMessage
from gateway.sinks.http import HttpSink


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A loopback HTTP server keeping (content type, body) of every POST; its URL and what it got."""
    got: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append((self.headers["content-type"], self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/in", got
    server.shutdown()
    server.server_close()


DEEP = b"[" * 3000 + b"]" * 3000


async def test_a_payload_nested_too_deep_is_posted_as_text(receiver: tuple[str, list[tuple[str, bytes]]]) -> None:
    url, got = receiver
    batch = [OutboxMessage(1, "apps/a", DEEP, 1.0), OutboxMessage(2, "apps/b", b'{"v": 1}', 2.0)]
    for mode in ("batch", "each"):
        sink = HttpSink(url, mode=mode)
        try:
            await sink.send(batch)
        finally:
            await sink.close()
    posted, deep_each, good_each = got
    assert json.loads(posted[1]) == [{"topic": "apps/a", "ts": 1000, "payload": DEEP.decode()},
                                     {"topic": "apps/b", "ts": 2000, "payload": {"v": 1}}]
    assert deep_each == ("application/octet-stream", DEEP) and good_each == ("application/json", b'{"v": 1}')
