"""From a message to a value (RFC 6901 pointers, regex groups, the whole payload, the model's type) and from a value
to a command (the template, JSON-escaped where it is JSON); hostile payloads give a reason, never an exception."""

from __future__ import annotations

import base64
import json
from typing import Any

import msgspec
import pytest
from fieldgate_mqtt.config import MqttVisitor
from fieldgate_mqtt.payload import BadMessage, CommandTemplate, Message, Selector, parse_pointer, resolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.resources.schema import PropertyModel

RFC_6901 = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "c%d": 2, "e^f": 3, "g|h": 4, "i\\j": 5, 'k"l': 6, " ": 7,
            "m~n": 8}


@pytest.mark.parametrize(("pointer", "value"), [
    ("", RFC_6901), ("/foo", ["bar", "baz"]), ("/foo/0", "bar"), ("/", 0), ("/a~1b", 1), ("/c%d", 2), ("/e^f", 3),
    ("/g|h", 4), ("/i\\j", 5), ('/k"l', 6), ("/ ", 7), ("/m~0n", 8),
])
def test_the_examples_of_rfc_6901(pointer: str, value: Any) -> None:
    assert resolve(RFC_6901, parse_pointer(pointer), pointer) == value


@pytest.mark.parametrize(("pointer", "reason"), [
    ("/foo/01", "/foo/01: /foo is an array, and '01' is no index"),
    ("/foo/-", "/foo/-: /foo is an array, and '-' is no index"),
    ("/foo/2", "/foo/2: the message has no /foo/2 (the array holds 2)"),
    ("/bar", "/bar: the message has no /bar"),
    ("/foo/0/x", "/foo/0/x: /foo/0 is a string, not an object or an array"),
    ("/a~1b/c", "/a~1b/c: /a~1b is a number, not an object or an array"),
])
def test_what_a_pointer_does_not_find_is_named(pointer: str, reason: str) -> None:
    with pytest.raises(BadMessage) as caught:
        resolve(RFC_6901, parse_pointer(pointer), pointer)
    assert str(caught.value) == reason


def selector(model_type: str, *, max_length: int | None = None, **visitor: Any) -> Selector:
    model = PropertyModel(name="p", type=model_type, max_length=max_length, minimum=None)  # type: ignore[arg-type]
    return Selector(msgspec.convert({"topic": "t", **visitor}, MqttVisitor), model)


@pytest.mark.parametrize(("model_type", "visitor", "payload", "value"), [
    ("float", {"json_pointer": "/t"}, b'{"t": 21.5}', 21.5),
    ("float", {"json_pointer": "/t"}, b'{"t": " 21.5 "}', 21.5),
    ("int", {"json_pointer": "/t"}, b'{"t": 40.6}', 40.6),  # the twin's reading rules round it: 41
    ("int", {"json_pointer": "/t"}, b'{"t": "0x10"}', 16),
    ("int", {"regex": r"n=(\S+)"}, b"n=2.5", 2.5),
    ("boolean", {"json_pointer": "/on"}, b'{"on": "ON"}', True),
    ("boolean", {"json_pointer": "/on"}, b'{"on": 0}', 0),
    ("string", {"json_pointer": "/s"}, b'{"s": "h\\u00e9"}', "h\u00e9"),
    ("string", {"json_pointer": "/n"}, b'{"n": 12}', 12),  # the reading rules write it as text
    ("bytes", {"json_pointer": "/b"}, b'{"b": "AAEC"}', b"\x00\x01\x02"),
    ("double", {"regex": r"T=(-?\d+(?:\.\d+)?)C"}, b"at 12:00 T=-3.25C, ok", -3.25),
    ("string", {"regex": r"status=(\w+)"}, b"status=running", "running"),
    ("float", {}, b"  21.5\n", 21.5),
    ("boolean", {}, b"off", False),
    ("string", {}, b"hello world", "hello world"),
    ("bytes", {}, b"\x00\xff raw", b"\x00\xff raw"),
    ("float", {"json_pointer": ""}, b"21.5", 21.5),
])
def test_values_by_pointer_regex_and_whole_payload(model_type: str, visitor: dict[str, Any], payload: bytes,
                                                   value: Any) -> None:
    got = selector(model_type, **visitor).value(Message(payload))
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize(("model_type", "visitor", "payload", "reason"), [
    ("float", {"json_pointer": "/t"}, b"21.5 C", "not JSON"),
    ("float", {"json_pointer": "/t"}, b'{"t": null}', "/t: the value is null, not a float"),
    ("float", {"json_pointer": "/t"}, b'{"t": [1]}', "/t: the value is an array, not a float"),
    ("float", {"json_pointer": "/t"}, b'{"t": "warm"}', "p: expected a number, got 'warm'"),
    ("float", {"json_pointer": "/t"}, b'{"t": "nan"}', "p: expected a finite number"),
    ("int", {"json_pointer": "/t"}, b'{"t": "two"}', "p: expected an integer, got 'two'"),
    ("boolean", {"json_pointer": "/t"}, b'{"t": 5}', "/t: expected a boolean, got 5"),
    ("bytes", {"json_pointer": "/t"}, b'{"t": 5}', "/t: expected bytes as base64 text, got a number"),
    ("bytes", {"json_pointer": "/t"}, b'{"t": "***"}', "p: expected base64 text"),
    ("string", {"json_pointer": "/t", "max_length": 3}, b'{"t": "abcd"}', "p: 4 characters, above the max_length 3"),
    ("float", {"json_pointer": "/t"}, b"[" * 2000, "the JSON nests too deep"),
    ("float", {"regex": r"T=(\d+)"}, b"no temperature", "does not match 'no temperature'"),
    ("float", {"regex": r"T=(\d+)?"}, b"T=", "the group of the regex 'T=(\\\\d+)?' matched nothing"),
    ("string", {}, b"\xff\xfe", "not UTF-8 text"),
    ("int", {}, b"", "p: expected an integer, got ''"),
])
def test_messages_that_give_no_value_say_why(model_type: str, visitor: dict[str, Any], payload: bytes,
                                             reason: str) -> None:
    max_length = visitor.pop("max_length", None)
    with pytest.raises(BadMessage) as caught:
        selector(model_type, max_length=max_length, **visitor).value(Message(payload))
    assert reason in str(caught.value), str(caught.value)


def test_a_message_is_decoded_once_for_every_property_reading_it() -> None:
    message = Message(b'{"a": 1, "b": "x"}')
    assert selector("int", json_pointer="/a").value(message) == 1
    decoded = message.json()
    assert selector("string", json_pointer="/b").value(message) == "x"
    assert message.json() is decoded


@given(payload=st.one_of(st.binary(max_size=300), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["a", "b", "0"]), inner, max_size=3),
    max_leaves=20).map(lambda doc: json.dumps(doc).encode())))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_hostile_payloads_give_a_value_or_a_reason(payload: bytes) -> None:
    """Whatever arrives, every kind of selector gives a value or a BadMessage: never another exception."""
    for model_type in ("int", "float", "double", "string", "boolean", "bytes"):
        for visitor in ({"json_pointer": "/a/0"}, {"json_pointer": "/b"}, {"json_pointer": ""},
                        {"regex": r"(\d+)"}, {}):
            try:
                selector(model_type, **visitor).value(Message(payload))
            except BadMessage:
                pass


@pytest.mark.parametrize(("template", "value", "payload"), [
    ("{value}", 21.5, b"21.5"),
    ("{value}", True, b"true"),
    ("{value}", b"\x00\x01", base64.b64encode(b"\x00\x01")),
    ("{value}", 'say "hi"', b'say "hi"'),
    ("set {property} of {device} ({namespace}) to {value}", 7, b"set sp of b1 (plant) to 7"),
])
def test_text_templates(template: str, value: Any, payload: bytes) -> None:
    assert CommandTemplate(template).render(value, prop="sp", device="b1", namespace="plant") == payload


@pytest.mark.parametrize(("template", "value", "document"), [
    ('{"sp": {value}}', 21.5, {"sp": 21.5}),
    ('{"sp": {value}}', 'a "quoted"\n\\ text', {"sp": 'a "quoted"\n\\ text'}),
    ('{"sp": "{value}"}', 21.5, {"sp": "21.5"}),
    ('{"sp": "{value}", "who": "{device}/{property}"}', 'x"}', {"sp": 'x"}', "who": "b1/sp"}),
    ('  [{value}, {device}, "{namespace}"]', False, [False, "b1", "plant"]),
    ('{"on": {value}, "note": "a \\"{value}\\" here"}', True, {"on": True, "note": 'a "true" here'}),
    ('{"raw": {value}}', b"\x00\x01", {"raw": "AAE="}),
])
def test_json_templates_stay_json(template: str, value: Any, document: Any) -> None:
    rendered = CommandTemplate(template).render(value, prop="sp", device="b1", namespace="plant")
    assert json.loads(rendered) == document


@given(value=st.one_of(st.text(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans()),
       device=st.from_regex(r"[a-z0-9]([-.]?[a-z0-9])*", fullmatch=True))
@settings(max_examples=300, deadline=None)
def test_any_value_in_a_json_template_gives_json_with_that_value(value: Any, device: str) -> None:
    template = CommandTemplate('{"v": {value}, "s": "{value}", "d": "{device}"}')
    document = json.loads(template.render(value, prop="p", device=device, namespace="n"))
    assert document["v"] == value and document["d"] == device
