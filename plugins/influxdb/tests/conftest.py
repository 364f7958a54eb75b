"""Fixtures: a gateway on a temp data dir and a fake InfluxDB write API on a free loopback port."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from gateway.testing import free_port, start_gateway, write_config

__all__ = ["FakeInflux", "free_port", "influx", "start_gateway", "write_config"]


class FakeInflux:
    """Records every write (path, query, headers, body) to /api/v2/write and /write, answering 204."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.writes: list[tuple[str, dict[str, list[str]], dict[str, str], str]] = []
        influx = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
                parts = urlsplit(self.path)
                influx.writes.append((parts.path, parse_qs(parts.query), {k.lower(): v for k, v in
                                                                           self.headers.items()}, body))
                self.send_response(204 if parts.path in ("/api/v2/write", "/write") else 404)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        return [text for *_, body in list(self.writes) for text in body.splitlines() if text]

    def __enter__(self) -> FakeInflux:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def influx() -> Iterator[FakeInflux]:
    with FakeInflux() as running:
        yield running
