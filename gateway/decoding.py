"""Decoding documents from outside (MQTT messages, request bodies, uploaded files) with a nesting limit.

A document nested a few thousand levels deep makes msgspec, `json` and PyYAML raise RecursionError, which no
caller expects; one a few hundred deep decodes but breaks whatever walks it later (YAML dumps, templates). No
document fieldgate reads nests anywhere near `MAX_DEPTH`, so deeper ones are refused before they are decoded.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import msgspec

from gateway.errors import ConfigError

MAX_DEPTH = 64  # a Workload document nests about 8 deep, a KubeEdge twin message 5, a heartbeat 7

# A JSON string, quotes included, or an unterminated one up to the end; brackets inside one do not nest. Every
# character but `"` can be taken, so a match never backtracks: linear in the length of the text.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.?[^"\\]*)*(?:"|\Z)', re.S)
# An array or object with no array or object inside: replacing them all takes one level off the document.
_INNERMOST = re.compile(rb"\[[^\[\]{}]*\]|\{[^\[\]{}]*\}")
_OPENING = re.compile(rb"[\[{]")


def too_deep(what: str, limit: int = MAX_DEPTH) -> ConfigError:
    return ConfigError(f"{what}: nests deeper than {limit} levels")


def json_nests_deeper(data: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests arrays and objects more than `limit` deep (text that is not JSON may say either)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if raw.count(b"[") + raw.count(b"{") <= limit:  # the common case: too few brackets to be that deep
        return False
    text = _JSON_STRING.sub(b'""', raw)
    for level in range(limit):
        text, peeled = _INNERMOST.subn(b"0", text)
        if not peeled:
            # What is left does not pair up, so it is not JSON; a parser would still descend into every open
            # bracket before it noticed.
            return level + len(_OPENING.findall(text)) > limit
    return _OPENING.search(text) is not None


def check_json_depth(data: bytes | str, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse JSON text nested deeper than `limit`, before anything decodes it."""
    if json_nests_deeper(data, limit):
        raise too_deep(what, limit)


def check_depth(value: Any, what: str, limit: int = MAX_DEPTH) -> None:
    """Refuse a decoded value (YAML, JSON) whose lists and mappings nest deeper than `limit`."""
    pending: list[tuple[Any, int]] = [(value, 0)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            raise too_deep(what, limit)
        pending.extend((child, depth + 1) for child in children)


def decode_json(data: bytes | str, type: Any = Any, *, what: str, dec_hook: Callable[[type, Any], Any] | None = None,
                strict: bool = True) -> Any:
    """JSON from outside as `type`; ConfigError naming `what` when it is not JSON, does not fit or nests too deep."""
    check_json_depth(data, what)
    try:
        return msgspec.json.decode(data, type=type, dec_hook=dec_hook, strict=strict)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise ConfigError(f"{what}: {exc}") from None
