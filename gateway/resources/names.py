"""Names of namespaced things as nodes and clients write them: `<namespace>/<name>`."""

from __future__ import annotations

from gateway.errors import ConfigError


def split_namespaced(value: str, what: str) -> tuple[str, str]:
    """(namespace, name) of `<namespace>/<name>`; ConfigError naming `what` and the value when it is not that."""
    namespace, sep, name = value.partition("/")
    if not sep or not namespace or not name:
        raise ConfigError(f"{what} {value!r}: expected <namespace>/<name>")
    return namespace, name
