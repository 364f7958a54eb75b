"""The `influxdb` sink: writes batches of line protocol to InfluxDB 2/3 (`/api/v2/write`) or 1.x (`/write`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import ClassVar

import httpx

from gateway.errors import ConfigError
from gateway.sinks.base import OutboxMessage, Sink, SinkError

log = logging.getLogger(__name__)
DROP_STATUSES = (400, 422)  # InfluxDB refuses these points for good (bad syntax, type conflict)


class InfluxSink(Sink):
    """One POST per batch, every message payload being one or more lines of line protocol."""

    name: ClassVar[str] = "influxdb"

    def __init__(self, url: str, *, bucket: str = "", org: str = "", token: str = "", database: str = "",
                 timeout: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"influxdb url {url!r}: expected http://host:port or https://host:port")
        if bool(bucket) == bool(database):
            raise ConfigError("influxdb: set either `bucket` (InfluxDB 2/3) or `database` (InfluxDB 1.x)")
        base = url.rstrip("/")
        if bucket:
            self.write_url = f"{base}/api/v2/write"
            self.params = {"bucket": bucket, "precision": "ns", **({"org": org} if org else {})}
        else:
            self.write_url = f"{base}/write"
            self.params = {"db": database, "precision": "ns"}
        self.headers = {"content-type": "text/plain; charset=utf-8"}
        if token:
            self.headers["authorization"] = f"Token {token}"
        self.timeout = timeout
        self.dropped = 0
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def from_properties(cls, properties: Mapping[str, str]) -> InfluxSink:
        """Build from an Endpoint's properties: url, bucket, org, token (or database)."""
        return cls(properties["url"], bucket=properties.get("bucket", ""), org=properties.get("org", ""),
                   token=properties.get("token", ""), database=properties.get("database", ""),
                   timeout=float(properties.get("timeout", "10")))

    async def open(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send(self, batch: list[OutboxMessage]) -> None:
        if self._client is None:
            await self.open()
        assert self._client is not None
        body = b"\n".join(m.payload for m in batch) + b"\n"
        try:
            response = await self._client.post(self.write_url, params=self.params, content=body)
        except httpx.HTTPError as exc:
            raise SinkError(f"POST {self.write_url}: {exc!s} ({type(exc).__name__})") from exc
        if response.status_code in DROP_STATUSES:
            # Retrying points InfluxDB rejects would block everything behind them.
            self.dropped += len(batch)
            log.error("InfluxDB refused %d message(s) with %d: %s; dropped them", len(batch),
                      response.status_code, response.text[:200])
        elif response.status_code >= 300:
            # 401/403/404 too: a wrong token or a missing bucket is fixed by the operator, the data waits
            raise SinkError(f"POST {self.write_url}: {response.status_code} {response.text[:200]}")
