"""The settings of one Sparkplug edge node, from the properties of the Endpoint document that names the plugin,
and the bdSeq counter kept in the gateway's data dir."""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fieldgate_sparkplug.metrics import check_id
from gateway.errors import ConfigError

log = logging.getLogger(__name__)
_UNSAFE_FILE = re.compile(r"[^A-Za-z0-9_.-]")


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
    def from_properties(cls, props: Mapping[str, str], node_name: str) -> NodeSettings:
        """Endpoint properties: url, group_id (required), edge_node_id (default: the gateway's name), qos,
        client_id, username, password, ca_file, cert_file, key_file, primary_host_id, keepalive."""
        url = props.get("url", "")
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise ConfigError(f"url {url!r}: expected mqtt://host:port or mqtts://host:port")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise ConfigError(f"url {url!r}: bad port") from None
        if "group_id" not in props:
            raise ConfigError("group_id: required (the Sparkplug group of this edge node)")
        group_id = check_id("group_id", props["group_id"])
        edge_node_id = check_id("edge_node_id", props.get("edge_node_id", node_name))
        primary = props.get("primary_host_id")
        qos = props.get("qos", "0")
        if qos not in ("0", "1"):
            raise ConfigError(f"qos {qos!r}: expected 0 or 1")
        keepalive = props.get("keepalive", "30")
        if not keepalive.isdigit() or not 5 <= int(keepalive) <= 3600:
            raise ConfigError(f"keepalive {keepalive!r}: expected seconds from 5 to 3600")
        if props.get("key_file") and not props.get("cert_file"):
            raise ConfigError("key_file: needs cert_file")
        return cls(
            host=parts.hostname, port=port, tls=tls, group_id=group_id, edge_node_id=edge_node_id,
            client_id=props.get("client_id") or f"fieldgate-sparkplug-{group_id}-{edge_node_id}",
            username=props.get("username") or parts.username, password=props.get("password") or parts.password,
            ca_file=props.get("ca_file"), cert_file=props.get("cert_file"), key_file=props.get("key_file"),
            qos=int(qos), primary_host_id=check_id("primary_host_id", primary) if primary is not None else None,
            keepalive=int(keepalive),
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
