"""`fieldgate browse mqtt URL`: listen on a broker for a while and write a DeviceModel and a Device for each topic
heard, one property per value in its messages (a JSON pointer for each leaf of a JSON message, else the payload)."""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiomqtt
import msgspec
import yaml

from fieldgate_mqtt.config import topic_problem
from fieldgate_mqtt.link import Login
from fieldgate_mqtt.payload import PLACEHOLDER
from gateway.errors import ConfigError, ProtocolError

MAX_TOPICS = 1000
MAX_PROPERTIES = 200  # per topic
MAX_DEPTH = 8  # of the JSON leaves made into properties
BROWSE_MESSAGE_MAX = 64 << 10  # a larger message is noted, not read


@dataclass
class Heard:
    """The messages of one topic: how many, when the first and the last came, and the last payload."""

    count: int
    first: float
    last: float
    payload: bytes


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("url", help="the broker: mqtt://host:port or mqtts://host:port")
    parser.add_argument("--topic", action="append", dest="topics", metavar="FILTER",
                        help="topic filter to listen on (repeat for more; default: #)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to listen (default 5)")
    parser.add_argument("--username", help="user at the broker")
    parser.add_argument("--password-stdin", action="store_true", help="read the password from the first line of "
                                                                       "stdin")
    parser.add_argument("--ca-file", help="CA certificates (PEM) to trust, for mqtts://")
    parser.add_argument("--cert-file", help="client certificate (PEM), for mqtts://")
    parser.add_argument("--key-file", help="client key (PEM), for mqtts://")
    parser.add_argument("--namespace", default="default", help="namespace of the documents (default: default)")
    parser.add_argument("-o", "--output", type=Path, help="write the documents to this file (default: stdout)")


def run(args: argparse.Namespace) -> int:
    if not 0 < args.seconds <= 3600:
        raise ConfigError(f"--seconds: expected more than 0 and at most 3600, got {args.seconds:g}")
    parts = urlsplit(args.url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{args.url!r}: expected mqtt://host:port or mqtts://host:port")
    topics = args.topics or ["#"]
    for topic in topics:
        problem = topic_problem(topic, (), filter_=True)
        if problem:
            raise ConfigError(f"--topic: {problem}")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    tls = parts.scheme == "mqtts"
    port = parts.port or (8883 if tls else 1883)
    login = Login(parts.hostname, port, tls, f"fieldgate-browse-{secrets.token_hex(4)}", args.username, password,
                  args.ca_file, args.cert_file, args.key_file)
    heard = asyncio.run(listen(login, topics, args.seconds))
    documents, notes = documents_for(heard, args.url, args.namespace)
    for note in notes:
        print(note, file=sys.stderr)
    text = yaml.safe_dump_all(documents, sort_keys=False, allow_unicode=True) if documents else ""
    if args.output is not None:
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    print(f"{len(heard)} topics heard in {args.seconds:g} s; {len(documents) // 2} devices written", file=sys.stderr)
    return 0


async def listen(login: Login, topics: list[str], seconds: float) -> dict[str, Heard]:
    """The messages heard on `topics` within `seconds` (retained ones come at once), by topic."""
    heard: dict[str, Heard] = {}
    try:
        async with aiomqtt.Client(login.host, login.port, identifier=login.client_id, username=login.username,
                                  password=login.password, tls_context=login.tls_context(), timeout=10) as client:
            for topic in topics:
                await client.subscribe(topic, qos=0, timeout=10)
            try:
                async with asyncio.timeout(seconds):
                    async for message in client.messages:
                        topic = str(message.topic)
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        now = time.monotonic()
                        entry = heard.get(topic)
                        if entry is None:
                            if len(heard) >= MAX_TOPICS:
                                continue
                            heard[topic] = Heard(1, now, now, payload)
                        else:
                            entry.count, entry.last, entry.payload = entry.count + 1, now, payload
            except TimeoutError:
                pass
    except aiomqtt.MqttError as exc:
        raise ProtocolError(f"{login.broker}: {exc}") from None
    return heard


def documents_for(heard: dict[str, Heard], url: str, namespace: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A DeviceModel and a Device for each topic heard (by name), and a note for each topic left out."""
    documents: list[dict[str, Any]] = []
    notes: list[str] = []
    taken: set[str] = set()
    for topic in sorted(heard):
        entry = heard[topic]
        if PLACEHOLDER.search(topic):
            notes.append(f"{topic}: left out (a topic with `{{name}}` in it reads as a placeholder)")
            continue
        if len(entry.payload) > BROWSE_MESSAGE_MAX:
            notes.append(f"{topic}: left out (its message has {len(entry.payload)} bytes)")
            continue
        properties = properties_of(entry.payload)
        if not properties:
            notes.append(f"{topic}: left out (its message holds no value: empty, null or not UTF-8 text)")
            continue
        name = unique(document_name(topic), taken)
        model_props = [{"name": prop, "type": kind, "access": "ReadOnly"} for prop, kind, _ in properties]
        device_props = [{"name": prop, "visitor": {"topic": topic, **visitor}} for prop, _, visitor in properties]
        timeout = "1m"
        if entry.count > 1:  # three of its periods, at least 10 s
            period = (entry.last - entry.first) / (entry.count - 1)
            timeout = f"{max(10, int(period * 3) + 1)}s"
        documents.append({"kind": "DeviceModel", "name": name, "namespace": namespace, "protocol": "mqtt",
                          "description": f"heard on {topic}", "properties": model_props})
        documents.append({"kind": "Device", "name": name, "namespace": namespace, "model": name,
                          "protocol": {"name": "mqtt", "config": {"url": url}}, "timeout": timeout,
                          "properties": device_props})
    return documents, notes


def properties_of(payload: bytes) -> list[tuple[str, str, dict[str, Any]]]:
    """(property name, model type, visitor fields) of each value in a message."""
    try:
        text = payload.decode()
    except UnicodeDecodeError:
        return []
    try:
        document = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        if not text.strip():
            return []
        return [("value", _text_type(text.strip()), {})]
    found: list[tuple[str, str, dict[str, Any]]] = []
    taken: set[str] = set()
    for pointer, value in leaves(document):
        if len(found) >= MAX_PROPERTIES:
            break
        kind = _json_type(value)
        if kind is None:
            continue
        tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer.split("/")[1:]]
        found.append((unique(property_name(tokens), taken, separator="_"), kind, {"json_pointer": pointer}))
    return found


def leaves(document: Any) -> list[tuple[str, Any]]:
    """(JSON pointer, value) of every value that is no object or array, in document order, MAX_DEPTH deep at most."""
    out: list[tuple[str, Any]] = []
    stack: list[tuple[str, Any, int]] = [("", document, 0)]
    while stack:
        pointer, node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth >= MAX_DEPTH:
                continue
            items = node.items() if isinstance(node, dict) else enumerate(node)
            children = [(f"{pointer}/{str(key).replace('~', '~0').replace('/', '~1')}", child, depth + 1)
                        for key, child in items]
            stack.extend(reversed(children))
        else:
            out.append((pointer, node))
    return out


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    return None


def _text_type(text: str) -> str:
    if re.fullmatch(r"[-+]?\d+", text):
        return "int"
    try:
        float(text)
    except ValueError:
        return "boolean" if text.lower() in ("true", "false", "on", "off") else "string"
    return "double"


def document_name(topic: str) -> str:
    """A document name from a topic: lowercase letters and digits, other runs of characters made one `-`."""
    name = re.sub(r"[^a-z0-9]+", "-", topic.lower()).strip("-")[:200].strip("-")
    return name or "topic"


def property_name(tokens: list[str]) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", "_".join(tokens)).strip("_")[:120] or "value"
    return name if re.match(r"[A-Za-z_]", name) else f"p{name}"


def unique(name: str, taken: set[str], separator: str = "-") -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name}{separator}{n}"
        n += 1
    taken.add(candidate)
    return candidate
