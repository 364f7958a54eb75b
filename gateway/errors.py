"""One exception tree for the whole gateway: every failure is a FieldgateError."""

from __future__ import annotations


class FieldgateError(Exception):
    """Base of every error the gateway raises on purpose."""


class ConfigError(FieldgateError):
    """Bad input: a configuration file, a command-line argument or an API request body."""


class ResourceError(ConfigError):
    """One or more resource documents are invalid; `problems` holds one line per finding."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ValueRejected(ConfigError):
    """A value for a device property does not fit its model (type, minimum, maximum, access)."""


class NotFound(FieldgateError):
    """A named resource (device, property, user, token) does not exist."""


class ProtocolError(FieldgateError):
    """A device did not answer as its protocol says (timeout, exception code, garbled frame)."""


class DeviceTimeout(ProtocolError):
    """A device did not answer within its timeout budget."""


class DeviceSilent(ProtocolError):
    """A device that sends its values itself (MQTT, subscriptions) sent none for longer than its timeout.

    Its connection stays open: the poller marks the device offline and reads again next cycle, so the first value
    that arrives brings it back at once (a DeviceTimeout would close the connection and back off instead)."""


class CodecError(FieldgateError):
    """Registers could not be decoded or a value could not be encoded for a field."""


class NativeError(FieldgateError):
    """The native module reported a failure (bad table, out of memory)."""


class StoreError(FieldgateError):
    """The SQLite store could not be opened or written."""


class AuthError(FieldgateError):
    """Missing or invalid credentials."""


class PluginError(FieldgateError):
    """A plugin could not be loaded or registered something invalid."""


class WorkloadError(FieldgateError):
    """An edge app could not be started, stopped or changed (runtime missing, limits refused, spawn failed)."""
