"""The properties of a `sparkplug` endpoint (checked at load), the settings of its edge node, and the bdSeq counter
kept in the gateway's data dir."""

from __future__ import annotations

import logging
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from fieldgate_sparkplug.metrics import check_id, valid_id
from gateway.resources.endpoints import check_url

log = logging.getLogger(__name__)
_UNSAFE_FILE = re.compile(r"[^A-Za-z0-9_.-]")


SparkplugId = Annotated[str, Meta(max_length=255, description="one topic level: not empty, no '/', '+' or '#'")]


class SparkplugProperties(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One Sparkplug B edge node: the broker it publishes to and its group and edge node ids."""

    url: Annotated[str, Meta(description="mqtt://host:port or mqtts://host:port; user:password@ may lead the host")]
    group_id: Annotated[SparkplugId, Meta(description="the Sparkplug group of this edge node")]
    edge_node_id: Annotated[SparkplugId | None, Meta(description="default: the gateway's name")] = None
    qos: Annotated[int, Meta(ge=0, le=1, description="of births, data and deaths (the specification asks for 0)")
                   ] = 0
    client_id: Annotated[str | None, Meta(description="default: fieldgate-sparkplug-<group_id>-<edge_node_id>")
                         ] = None
    username: str | None = None
    password: str | None = None
    ca_file: Annotated[str | None, Meta(description="CA certificate (PEM) to trust, for mqtts://")] = None
    cert_file: Annotated[str | None, Meta(description="client certificate (PEM), for mqtts://")] = None
    key_file: Annotated[str | None, Meta(description="client key (PEM); needs cert_file")] = None
    primary_host_id: Annotated[SparkplugId | None, Meta(
        description="publish births only while that host's STATE says online")] = None
    keepalive: Annotated[int, Meta(ge=5, le=3600, description="seconds")] = 30

    def __post_init__(self) -> None:
        check_url(self.url, ("mqtt", "mqtts"))
        for field in ("group_id", "edge_node_id", "primary_host_id"):
            value = getattr(self, field)
            if value is not None and not valid_id(value):
                raise ValueError(f"{field}: {value!r} must be one non-empty topic level, without '/', '+' or '#'")
        if self.key_file and not self.cert_file:
            raise ValueError("key_file: needs cert_file")


@dataclass(frozen=True, slots=True)
class NodeSettings:
    host: str
    port: int
    tls: bool
    group_id: str
    edge_node_id: str
    client_id: str
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    qos: int = 0
    primary_host_id: str | None = None
    keepalive: int = 30

    @classmethod
    def from_properties(cls, props: SparkplugProperties, node_name: str) -> NodeSettings:
        """The settings of the edge node of a `sparkplug` endpoint (its properties, checked at load)."""
        parts = urlsplit(props.url)
        assert parts.hostname is not None  # checked at load (SparkplugProperties)
        tls = parts.scheme == "mqtts"
        edge_node_id = check_id("edge_node_id", props.edge_node_id or node_name)
        return cls(
            host=parts.hostname, port=parts.port or (8883 if tls else 1883), tls=tls, group_id=props.group_id,
            edge_node_id=edge_node_id,
            client_id=props.client_id or f"fieldgate-sparkplug-{props.group_id}-{edge_node_id}",
            username=props.username or parts.username, password=props.password or parts.password,
            ca_file=props.ca_file, cert_file=props.cert_file, key_file=props.key_file, qos=props.qos,
            primary_host_id=props.primary_host_id, keepalive=props.keepalive,
        )

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    @property
    def label(self) -> str:
        return f"{self.group_id}/{self.edge_node_id}"


class BdSeqCounter:
    """The birth/death sequence number: 0..255, one more for every MQTT connection, kept across restarts.

    A value is saved once its connection is accepted, so a broker that stays down costs no writes; a host that
    saw it never sees it again for another session, even when the box loses power right after."""

    def __init__(self, data_dir: Path, settings: NodeSettings) -> None:
        name = f"{_UNSAFE_FILE.sub('_', settings.group_id)}--{_UNSAFE_FILE.sub('_', settings.edge_node_id)}"
        self.path = data_dir / "sparkplug" / f"{name}.bdseq"
        self._upcoming: int | None = None

    def last(self) -> int | None:
        """The bdSeq of the last accepted connection, None when there was none (or the file is unreadable)."""
        try:
            text = self.path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            log.warning("%s: cannot read the last bdSeq, starting again at 0: %s", self.path, exc)
            return None
        if not text.isdigit() or int(text) > 255:
            log.warning("%s: %r is no bdSeq, starting again at 0", self.path, text)
            return None
        return int(text)

    def upcoming(self) -> int:
        """The bdSeq for the next connection (blocking file I/O the first time)."""
        if self._upcoming is None:
            last = self.last()
            self._upcoming = 0 if last is None else (last + 1) % 256
        return self._upcoming

    def commit(self, value: int) -> None:
        """The connection with this bdSeq was accepted: save it (blocking file I/O); the next one is one more."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with open(temporary, "w", encoding="ascii") as file:
            file.write(f"{value}\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)
        self._upcoming = (value + 1) % 256
