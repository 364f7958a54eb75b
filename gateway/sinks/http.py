"""The `http`, `servicebus` and `rest` sinks: POST messages to a URL (any URL, a local service, the cloud side),
in order. httpx (about 9 MB) is imported when a sink first connects, not when the types are registered."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from gateway.decoding import decode_json
from gateway.errors import ConfigError
from gateway.resources.endpoints import HttpProperties, RestProperties, ServicebusProperties
from gateway.sinks.base import OutboxMessage, Sink, SinkContext, SinkError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)


class PostingSink(Sink):
    """`batch` mode posts one JSON array `[{topic, ts, payload}, …]` per batch; `each` posts every message body
    as it is, one request per message (what a service behind a KubeEdge servicebus or rest rule expects)."""

    def __init__(self, url: str, *, mode: str = "batch", headers: dict[str, str] | None = None,
                 timeout: float = 10.0) -> None:
        self.url = url
        self.mode = mode
        self.headers = headers or {}
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        self.dropped = 0

    async def open(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, batch: list[OutboxMessage]) -> None:
        if self._client is None:
            await self.open()
        assert self._client is not None
        if self.mode == "each":
            for message in batch:
                await self._post(message.payload, _content_type(message.payload), [message])
        else:
            body = msgspec.json.encode([{"topic": m.topic, "ts": int(m.created * 1000), "payload": _decoded(m.payload)}
                                        for m in batch])
            await self._post(body, "application/json", batch)

    async def _post(self, body: bytes, content_type: str, messages: list[OutboxMessage]) -> None:
        import httpx

        assert self._client is not None
        try:
            response = await self._client.post(self.url, content=body, headers={"content-type": content_type})
        except httpx.HTTPError as exc:
            raise SinkError(f"POST {self.url}: {exc!s} ({type(exc).__name__})") from exc
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise SinkError(f"POST {self.url}: {response.status_code} {response.reason_phrase}")
        if response.status_code >= 400:
            # The target refuses these messages for good: retrying would block everything behind them.
            self.dropped += len(messages)
            log.error("POST %s refused %d message(s) with %d %s; dropped them", self.url, len(messages),
                      response.status_code, response.text[:200])


class ServicebusSink(PostingSink):
    """Each message body as it is to a local service: `http://<host>:<service_port><target_resource.path>`."""

    name: ClassVar[str] = "servicebus"
    properties_type = ServicebusProperties
    target_resource = "path"
    description = "a local HTTP service on a port"

    @classmethod
    def for_route(cls, properties: ServicebusProperties, target_resource: Mapping[str, str],
                  context: SinkContext) -> ServicebusSink:
        return cls(f"http://{properties.host}:{properties.service_port}{target_resource['path']}", mode="each")


class RestSink(PostingSink):
    """Each message body as it is to the route's `target_resource.resource` URL."""

    name: ClassVar[str] = "rest"
    properties_type = RestProperties
    target_resource = "resource"
    description = "a URL the gateway calls (as a source: `POST /api/v1/messages/<path>`)"

    @classmethod
    def for_route(cls, properties: RestProperties, target_resource: Mapping[str, str],
                  context: SinkContext) -> RestSink:
        return cls(target_resource["resource"], mode="each")


class HttpSink(PostingSink):
    """Any URL (with the route's `target_resource.path` appended), in `batch` or `each` mode, with headers."""

    name: ClassVar[str] = "http"
    properties_type = HttpProperties
    target_resource = "path"
    target_resource_optional = True
    description = "any URL"

    @classmethod
    def for_route(cls, properties: HttpProperties, target_resource: Mapping[str, str],
                  context: SinkContext) -> HttpSink:
        return cls(properties.url + target_resource.get("path", ""), mode=properties.mode,
                   headers=dict(properties.headers))


def _decoded(payload: bytes) -> Any:
    """A message that is JSON as the JSON value, any other (too deep to decode safely included) as text."""
    try:
        return decode_json(payload, what="message")
    except ConfigError:
        return payload.decode(errors="replace")


def _content_type(payload: bytes) -> str:
    try:
        decode_json(payload, what="message")
    except ConfigError:
        return "application/octet-stream"
    return "application/json"
