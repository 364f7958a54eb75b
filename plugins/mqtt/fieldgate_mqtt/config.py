"""The protocol config and the property visitor of MQTT devices, checked when a file loads."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from msgspec import Meta

from fieldgate_mqtt.payload import PLACEHOLDER, TEMPLATE_PLACEHOLDERS, CommandTemplate
from gateway.errors import ConfigError
from gateway.resources.schema import Base, PropertyModel

Qos = Literal[0, 1, 2]
# The most one message may hold before it is dropped unread (a property then has bad quality); a reading is one
# value, and the largest a property takes is 64 KiB of text.
MAX_MESSAGE_DEFAULT = 256 << 10
MAX_MESSAGE_LIMIT = 16 << 20
MAX_TOPIC_BYTES = 65535  # what an MQTT length prefix carries
TOPIC_PLACEHOLDERS = ("device", "namespace")
COMMAND_TOPIC_PLACEHOLDERS = ("device", "namespace", "property")
POINTER_TOKEN = re.compile(r"(?:[^~]|~[01])*")
Text = Annotated[str, Meta(min_length=1, max_length=4096)]
CLIENT_ID = re.compile(r"[\x21-\x7e]+")


class MqttConfig(Base, kw_only=True):
    """`protocol.config` of an `mqtt` device; devices with the same broker, login and TLS files share one session."""

    url: Annotated[Text | None, Meta(
        description="mqtt://host:port or mqtts://host:port (TLS; port 8883 unless given)")] = None
    eventbus: Annotated[bool, Meta(
        description="use the gateway's eventbus broker (its address, TLS files and, at the embedded broker, the "
                    "gateway's own login) instead of a url")] = False
    client_id: Annotated[Annotated[str, Meta(min_length=1, max_length=128)] | None, Meta(
        description="MQTT client id of the shared session (default: fieldgate-<node>-devices-<hash of the "
                    "broker, login and TLS files>)")] = None
    username: Annotated[Text | None, Meta(description=(
        "user at the broker (with `eventbus: true`: a user of `eventbus.users` instead of the gateway's own)"))] = None
    password: Annotated[str | None, Meta(description="password at the broker (kept in the store like the rest of "
                                                     "the document: prefer password_file)")] = None
    password_file: Annotated[Text | None, Meta(
        description="absolute path of a file whose first line is the password (read on connect)")] = None
    ca_file: Annotated[Text | None, Meta(description="CA certificates (PEM) to trust, for mqtts://")] = None
    cert_file: Annotated[Text | None, Meta(description="client certificate (PEM), for mqtts://")] = None
    key_file: Annotated[Text | None, Meta(description="client key (PEM), for mqtts://")] = None
    keepalive: Annotated[int, Meta(ge=5, le=3600, description="seconds between keepalive pings")] = 30
    max_message: Annotated[int, Meta(ge=16, le=MAX_MESSAGE_LIMIT, description=(
        "bytes a message may have; a larger one is dropped unread and its properties get bad quality"))
    ] = MAX_MESSAGE_DEFAULT

    def __post_init__(self) -> None:
        if (self.url is None) == (not self.eventbus):
            raise ValueError("url: give the broker's url or 'eventbus: true', one of them")
        if self.password is not None and self.password_file is not None:
            raise ValueError("password_file: give password or password_file, not both")
        if (self.password is not None or self.password_file is not None) and self.username is None:
            raise ValueError("username: a password needs a username")
        if self.password_file is not None and not self.password_file.startswith("/"):
            raise ValueError(f"password_file: {self.password_file!r} is not an absolute path")
        tls_files = [name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name) is not None]
        if self.eventbus and tls_files:
            raise ValueError(f"{tls_files[0]}: the eventbus settings give the TLS files of the gateway's eventbus")
        if self.client_id is not None and not CLIENT_ID.fullmatch(self.client_id):
            raise ValueError(f"client_id: {self.client_id!r}: printable ASCII characters, no spaces")
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("mqtt", "mqtts") or parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ValueError(f"url: {self.url!r}: expected mqtt://host:port or mqtts://host:port")
            if tls_files and parts.scheme != "mqtts":
                raise ValueError(f"{tls_files[0]}: TLS files need an mqtts:// url")
            try:
                parts.port  # noqa: B018 (a port that is no number or out of range raises)
            except ValueError as exc:
                raise ValueError(f"url: {exc}") from None
            if not parts.hostname:
                raise ValueError(f"url: {self.url!r} names no host")
            if parts.username is not None:
                raise ValueError("url: give the login as username and password, not in the url")
        if self.key_file is not None and self.cert_file is None:
            raise ValueError("key_file: a client key needs its cert_file")


class MqttVisitor(Base, kw_only=True):
    """Where a property's value arrives and where its desired values are published."""

    topic: Annotated[str, Meta(min_length=1, max_length=4096, description=(
        "MQTT topic filter the values arrive on (`+` one level, `#` the rest); `{device}` and `{namespace}` are "
        "the device's name and namespace"))]
    json_pointer: Annotated[Annotated[str, Meta(max_length=1024)] | None, Meta(description=(
        "RFC 6901 pointer to the value in a JSON message, e.g. `/sensors/0/temp` (empty: the whole document)"))
    ] = None
    regex: Annotated[Annotated[str, Meta(min_length=1, max_length=1024)] | None, Meta(description=(
        "regular expression with one group, searched in the message's text; the group is the value"))] = None
    qos: Annotated[Qos, Meta(description="QoS of the subscription")] = 1
    command_topic: Annotated[Text | None, Meta(description=(
        "topic a desired value is published on (ReadWrite properties); `{device}`, `{namespace}` and `{property}` "
        "are filled in"))] = None
    command_template: Annotated[str, Meta(min_length=1, max_length=65536, description=(
        "the command's payload: `{value}`, `{property}`, `{device}` and `{namespace}` are filled in; a template "
        "that begins with `{` or `[` once its placeholders are taken out is JSON: what is put in a JSON string is "
        "escaped there, and a `{value}` outside strings is the value as JSON (a string quoted)"))] = "{value}"
    command_qos: Annotated[Qos, Meta(description="QoS of the command")] = 1
    command_retain: Annotated[bool, Meta(description="publish the command retained")] = False

    def __post_init__(self) -> None:
        if self.json_pointer is not None and self.regex is not None:
            raise ValueError("regex: give json_pointer or regex (or neither, for the whole payload), not both")
        problem = topic_problem(self.topic, TOPIC_PLACEHOLDERS, filter_=True)
        if problem:
            raise ValueError(f"topic: {problem}")
        if self.json_pointer is not None:
            problem = pointer_problem(self.json_pointer)
            if problem:
                raise ValueError(f"json_pointer: {problem}")
        if self.regex is not None:
            try:
                groups = re.compile(self.regex).groups
            except re.error as exc:
                raise ValueError(f"regex: {exc}") from None
            if groups != 1:
                raise ValueError(f"regex: needs exactly one group, the value; {self.regex!r} has {groups}")
        if self.command_topic is not None:
            problem = topic_problem(self.command_topic, COMMAND_TOPIC_PLACEHOLDERS, filter_=False)
            if problem:
                raise ValueError(f"command_topic: {problem}")
        unknown = [name for name in PLACEHOLDER.findall(self.command_template) if name not in TEMPLATE_PLACEHOLDERS]
        if unknown:
            raise ValueError(f"command_template: unknown placeholder {{{unknown[0]}}} (known: "
                             f"{', '.join('{' + name + '}' for name in TEMPLATE_PLACEHOLDERS)})")
        CommandTemplate(self.command_template).check()


def topic_problem(topic: str, placeholders: tuple[str, ...], *, filter_: bool) -> str | None:
    """Why `topic` is no MQTT topic (or, with `filter_`, topic filter) once its placeholders are filled, or None."""
    for name in PLACEHOLDER.findall(topic):
        if name not in placeholders:
            return (f"unknown placeholder {{{name}}} in {topic!r} (known: "
                    f"{', '.join('{' + p + '}' for p in placeholders)})")
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        return f"longer than {MAX_TOPIC_BYTES} bytes"
    if "\0" in topic:
        return "a topic has no NUL character"
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if not filter_ and ("+" in level or "#" in level):
            return f"{topic!r}: '+' and '#' are for subscriptions, not for a topic to publish on"
        if "#" in level and (level != "#" or index != len(levels) - 1):
            return f"{topic!r}: '#' must be a whole level, and the last one"
        if "+" in level and level != "+":
            return f"{topic!r}: '+' must be a whole level"
    return None


def pointer_problem(pointer: str) -> str | None:
    """Why `pointer` is no RFC 6901 JSON pointer, or None."""
    if pointer and not pointer.startswith("/"):
        return f"{pointer!r}: a JSON pointer is empty or starts with '/'"
    for token in pointer.split("/")[1:]:
        if not POINTER_TOKEN.fullmatch(token):
            return f"{pointer!r}: '~' is written '~0' and '/' '~1' in a pointer"
    return None


def fill(template: str, **names: str) -> str:
    """A topic with its `{device}`, `{namespace}` (and `{property}`) placeholders filled in."""
    for name, value in names.items():
        template = template.replace(f"{{{name}}}", value)
    return template


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching: `+` one level, `#` the rest; wildcards at the start do not match topics that begin with `$`."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    filter_levels = topic_filter.split("/")
    levels = topic.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return True
        if index >= len(levels):
            return False
        if level != "+" and level != levels[index]:
            return False
    return len(filter_levels) == len(levels)


def check_visitor(visitor: MqttVisitor, model: PropertyModel) -> None:
    """What a visitor needs beyond its type: a ReadWrite property needs a command topic, and one that its own topic
    does not match (the gateway would take its own commands for the device's values, and confirm every write)."""
    if visitor.command_topic is None:
        if model.access == "ReadWrite":
            raise ConfigError(f"{model.name!r} is ReadWrite: give the command_topic its desired values are "
                              "published on (or make the property ReadOnly)")
        return
    names = {"device": "device", "namespace": "namespace"}
    command = fill(visitor.command_topic, property=model.name, **names)
    if topic_matches(fill(visitor.topic, **names), command):
        raise ConfigError(f"the command_topic {visitor.command_topic!r} is one the topic {visitor.topic!r} reads: "
                          "the gateway would take its own commands for the device's values")
