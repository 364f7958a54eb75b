"""MQTT 3.1.1 topic and topic-filter rules shared by both router backends."""

from __future__ import annotations

from gateway.errors import ConfigError

MAX_TOPIC_BYTES = 65535


def _encoded(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise ConfigError(f"{what} must be a string, got {type(text).__name__}")
    if not text:
        raise ConfigError(f"{what} must not be empty")
    if "\x00" in text:
        raise ConfigError(f"{what} {text!r} contains a NUL character")
    try:
        data = text.encode()
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{what} {text!r} is not valid UTF-8: {exc.reason}") from None
    if len(data) > MAX_TOPIC_BYTES:
        raise ConfigError(f"{what} is {len(data)} bytes long; MQTT allows {MAX_TOPIC_BYTES}")
    return data


def validate_filter(topic_filter: str) -> None:
    """Raise ConfigError with the reason when `topic_filter` breaks the MQTT 3.1.1 rules."""
    _encoded(topic_filter, "topic filter")
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            raise ConfigError(f"topic filter {topic_filter!r}: '#' must be alone in the last level")
        if "+" in level and level != "+":
            raise ConfigError(f"topic filter {topic_filter!r}: '+' must be alone in its level")


def validate_topic(topic: str) -> None:
    """Raise ConfigError when `topic` can not be published to (empty, wildcards, NUL, too long)."""
    _encoded(topic, "topic")
    if "+" in topic or "#" in topic:
        raise ConfigError(f"topic {topic!r} contains a wildcard; only topic filters may")
