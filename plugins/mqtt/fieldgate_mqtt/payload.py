"""From a message to a property's value (a JSON pointer, a regex group or the whole payload, converted to the
model's type) and from a desired value to a command's payload (the command template). No I/O here."""

from __future__ import annotations

import contextlib
import math
import re
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import ProtocolError, ValueRejected
from gateway.resources.schema import PropertyModel
from gateway.resources.values import coerce, short, to_wire_text

if TYPE_CHECKING:
    from fieldgate_mqtt.config import MqttVisitor

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
TEMPLATE_PLACEHOLDERS = ("value", "property", "device", "namespace")
_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class BadMessage(ProtocolError):
    """A message that gives no value for a property (not JSON, no such member, a value of the wrong type)."""


class Message:
    """One received message; its JSON and its text are decoded once, for every property that reads it."""

    __slots__ = ("_json", "_text", "payload")

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self._json: Any = _UNSET
        self._text: str | None = None

    def json(self) -> Any:
        if self._json is _UNSET:
            try:
                self._json = _decoder.decode(self.payload)
            except msgspec.DecodeError as exc:
                self._json = BadMessage(f"not JSON ({exc}): {short(self.payload)}")
            except RecursionError:
                self._json = BadMessage("the JSON nests too deep")
        if isinstance(self._json, BadMessage):
            raise self._json
        return self._json

    def text(self) -> str:
        if self._text is None:
            try:
                self._text = self.payload.decode()
            except UnicodeDecodeError:
                raise BadMessage(f"not UTF-8 text: {short(self.payload)}") from None
        return self._text


_UNSET: Any = object()


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """The reference tokens of an RFC 6901 pointer (checked when the visitor loaded), unescaped."""
    return tuple(token.replace("~1", "/").replace("~0", "~") for token in pointer.split("/")[1:])


def resolve(document: Any, tokens: tuple[str, ...], pointer: str) -> Any:
    """The value a pointer selects (RFC 6901); BadMessage naming what is missing."""
    node = document
    for depth, token in enumerate(tokens):
        if isinstance(node, dict):
            if token not in node:
                raise BadMessage(f"{pointer}: the message has no {_where(tokens, depth)}")
            node = node[token]
        elif isinstance(node, list):
            if not (token == "0" or (token[:1] in "123456789" and token.isdigit() and token.isascii())):
                raise BadMessage(f"{pointer}: {_parent(tokens, depth)} is an array, and {token!r} is no index")
            index = int(token)
            if index >= len(node):
                raise BadMessage(f"{pointer}: the message has no {_where(tokens, depth)} (the array holds "
                                 f"{len(node)})")
            node = node[index]
        else:
            raise BadMessage(f"{pointer}: {_parent(tokens, depth)} is {_json_kind(node)}, not an object or an array")
    return node


def _parent(tokens: tuple[str, ...], depth: int) -> str:
    return _where(tokens, depth - 1) if depth else "the message"


def _where(tokens: tuple[str, ...], depth: int) -> str:
    return "/" + "/".join(token.replace("~", "~0").replace("/", "~1") for token in tokens[: depth + 1])


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an object" if isinstance(value, dict) else "an array"


class Selector:
    """What one property takes from a message, converted to its model's type."""

    def __init__(self, visitor: MqttVisitor, model: PropertyModel) -> None:
        self.model = model
        # Readings are not held to minimum/maximum (the device says what it holds), only to the type and length.
        self._unbounded = msgspec.structs.replace(model, minimum=None, maximum=None)
        self.pointer = visitor.json_pointer
        self._label = visitor.json_pointer or "the message"
        self._tokens = parse_pointer(visitor.json_pointer) if visitor.json_pointer is not None else None
        self._regex = re.compile(visitor.regex) if visitor.regex is not None else None

    def value(self, message: Message) -> Any:
        """The property's value in a message; BadMessage with the reason when there is none."""
        if self._tokens is not None:
            return self._convert(resolve(message.json(), self._tokens, self.pointer or ""))
        if self._regex is not None:
            match = self._regex.search(message.text())
            if match is None:
                raise BadMessage(f"the regex {self._regex.pattern!r} does not match {short(message.text())}")
            group = match.group(1)
            if group is None:
                raise BadMessage(f"the group of the regex {self._regex.pattern!r} matched nothing")
            return self._convert(group)
        if self.model.type == "bytes":
            return message.payload  # the payload itself, not base64 text
        return self._convert(message.text())

    def _convert(self, raw: Any) -> Any:
        """A value from a message as the model's type, by the rules values from outside follow."""
        if isinstance(raw, str):
            try:
                return coerce(self._unbounded, raw)
            except ValueRejected as exc:
                if self.model.type == "int":  # "2.5" reads as 2.5 does: the reading rules round it
                    with contextlib.suppress(ValueError):
                        number = float(raw)
                        if math.isfinite(number):
                            return number
                raise BadMessage(str(exc)) from None
        if raw is None or isinstance(raw, dict | list):
            raise BadMessage(f"{self._label}: the value is {_json_kind(raw)}, not a {self.model.type}")
        if self.model.type == "bytes":
            raise BadMessage(f"{self._label}: expected bytes as base64 text, got {_json_kind(raw)}")
        if self.model.type == "boolean" and not isinstance(raw, bool) and raw not in (0, 1):
            raise BadMessage(f"{self._label}: expected a boolean, got {short(raw)}")
        return raw  # a number or a boolean: the twin's reading rules convert it (an int rounds half away from 0)


class CommandTemplate:
    """A command's payload with `{value}`, `{property}`, `{device}` and `{namespace}` filled in.

    A template that begins with `{` or `[` once its placeholders are taken out is JSON: a placeholder inside a JSON
    string is put in escaped, one outside strings as a JSON value (`{value}` as the value's JSON, the names as JSON
    strings), so that what is published stays JSON whatever the value. Any other template is text.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.json = PLACEHOLDER.sub("", text).lstrip().startswith(("{", "["))
        self._parts: list[str | tuple[str, bool]] = []  # literal text, or (placeholder, inside a JSON string)
        literal: list[str] = []
        in_string = escaped = False
        index = 0
        while index < len(text):
            match = PLACEHOLDER.match(text, index)
            if match is not None and match[1] in TEMPLATE_PLACEHOLDERS and not escaped:
                if literal:
                    self._parts.append("".join(literal))
                    literal = []
                self._parts.append((match[1], in_string))
                index = match.end()
                continue
            char = text[index]
            literal.append(char)
            if self.json:
                if escaped:
                    escaped = False
                elif in_string and char == "\\":
                    escaped = True
                elif char == '"':
                    in_string = not in_string
            index += 1
        if literal:
            self._parts.append("".join(literal))

    def render(self, value: Any, *, prop: str, device: str, namespace: str) -> bytes:
        names = {"property": prop, "device": device, "namespace": namespace}
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
                continue
            name, in_string = part
            if not self.json:
                out.append(to_wire_text(value) if name == "value" else names[name])
            elif in_string:
                text = to_wire_text(value) if name == "value" else names[name]
                out.append(_encoder.encode(text).decode()[1:-1])
            else:
                out.append(_encoder.encode(value if name == "value" else names[name]).decode())
        return "".join(out).encode()

    def check(self) -> None:
        """Raise ValueError when a JSON template does not give JSON for every kind of value."""
        if not self.json:
            return
        for sample in (0, 1.5, True, 'a "quoted" \\ text', b"\x00\x01"):
            rendered = self.render(sample, prop="p", device="d", namespace="ns")
            try:
                _decoder.decode(rendered)
            except (msgspec.DecodeError, RecursionError) as exc:
                raise ValueError(f"command_template: a template that begins with {{ or [ is JSON, and this one is "
                                 f"not once filled in ({exc}): {short(rendered.decode())}") from None
