"""The `influxdb` sink: a route's device reports as line protocol, in batches, to InfluxDB 2/3 (`/api/v2/write`)
or 1.x (`/write`). httpx is imported when the sink first connects, not when the type is registered."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

from fieldgate_influxdb.lineprotocol import line
from gateway.resources.endpoints import check_url
from gateway.sinks.base import OutboxMessage, Sink, SinkContext, SinkError

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)
DROP_STATUSES = (400, 422)  # InfluxDB refuses these points for good (bad syntax, type conflict)


class InfluxProperties(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """The InfluxDB to write to: `bucket` (and `org`, `token`) for InfluxDB 2/3, or `database` for 1.x."""

    url: Annotated[str, Meta(description="http://host:port or https://host:port")]
    bucket: Annotated[str, Meta(description="InfluxDB 2/3: the bucket")] = ""
    org: Annotated[str, Meta(description="InfluxDB 2/3: the organisation")] = ""
    token: Annotated[str, Meta(description="InfluxDB 2/3: an API token with write access")] = ""
    database: Annotated[str, Meta(description="InfluxDB 1.x: the database (instead of bucket)")] = ""
    measurement: Annotated[str, Meta(min_length=1, description="the measurement of every point")] = "telemetry"
    timeout: Annotated[float, Meta(gt=0, le=300, description="seconds a write may take")] = 10.0

    def __post_init__(self) -> None:
        check_url(self.url, ("http", "https"))
        if bool(self.bucket) == bool(self.database):
            raise ValueError("bucket: set either `bucket` (InfluxDB 2/3) or `database` (InfluxDB 1.x)")


class InfluxSink(Sink):
    """One POST per batch; device reports (`{"device", "ts", "values"}`) become one point each, tagged with the
    device and the node. Lines already in line protocol (outboxes written before the sink took reports) go as
    they are."""

    name: ClassVar[str] = "influxdb"
    properties_type = InfluxProperties
    target_resource = ""
    older_form = True  # `type: http` + `properties.plugin: influxdb`, with no route: a route from `topic`
    description = "InfluxDB 2/3 or 1.x: device reports as line protocol"

    def __init__(self, url: str, *, bucket: str = "", org: str = "", token: str = "", database: str = "",
                 measurement: str = "telemetry", node: str = "", timeout: float = 10.0) -> None:
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
        self.measurement = measurement
        self.node = node
        self.timeout = timeout
        self.dropped = 0
        self._client: httpx.AsyncClient | None = None

    @classmethod
    def for_route(cls, properties: InfluxProperties, target_resource: Mapping[str, str],
                  context: SinkContext) -> InfluxSink:
        return cls(properties.url, bucket=properties.bucket, org=properties.org, token=properties.token,
                   database=properties.database, measurement=properties.measurement, node=context.node_name,
                   timeout=properties.timeout)

    def lines(self, message: OutboxMessage) -> bytes | None:
        """A message as line protocol: a device report as one point; None when it carries nothing to write."""
        payload = message.payload
        if not payload.startswith(b"{"):
            return payload.rstrip(b"\n") or None  # already line protocol
        try:
            report = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return None
        if not _is_report(report):
            return None
        text = line(self.measurement, {"device": report["device"], "node": self.node}, report["values"],
                    int(report["ts"]) * 1_000_000)
        return text.encode() if text is not None else None

    async def open(self) -> None:
        import httpx

        self._client = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def send(self, batch: list[OutboxMessage]) -> None:
        import httpx

        points = [text for message in batch if (text := self.lines(message)) is not None]
        if not points:
            return  # nothing InfluxDB could store (no values, not a device report): done with these
        if self._client is None:
            await self.open()
        assert self._client is not None
        body = b"\n".join(points) + b"\n"
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


def _is_report(value: Any) -> bool:
    return (isinstance(value, dict) and isinstance(value.get("device"), str) and isinstance(value.get("values"), dict)
            and isinstance(value.get("ts"), int | float) and not isinstance(value.get("ts"), bool))
