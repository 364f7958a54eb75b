"""The protocol contract (the DMI mapper verbs InitDevice/GetDeviceData/SetDeviceData/StopDevice, async)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from gateway.resources.schema import Device, DeviceProperty, PropertyModel

if TYPE_CHECKING:
    from gateway.api import GatewayAPI


@dataclass(frozen=True, eq=False)
class BoundProperty:
    """A device property joined with its model entry and its protocol-specific visitor."""

    name: str
    model: PropertyModel
    spec: DeviceProperty
    visitor: Any
    collect_interval: float
    report_interval: float

    @property
    def writable(self) -> bool:
        return self.model.access == "ReadWrite"


@dataclass(frozen=True, eq=False)
class BoundDevice:
    """A device resource with its protocol config and properties resolved against its model and protocol."""

    resource: Device
    config: Any
    properties: Mapping[str, BoundProperty]

    @property
    def id(self) -> str:
        return f"{self.resource.namespace}/{self.resource.name}"


@dataclass
class ReadResult:
    """What one read returned: values by property name, and a reason for each property that failed."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Protocol(abc.ABC):
    """One connection to one device. The poller owns the instance and calls it from the device's task only.

    Subclasses name the protocols they serve in `names`, their config Struct in `config_type` and their visitor
    Struct in `visitor_type`. Methods raise gateway.errors.ProtocolError (or a subclass) on failure.

    A device that reports values by itself (a subscription, a change-of-value notification) hands them to
    `push(result)` at any time between `open()` and `close()`: they reach the twin and the bus at once, between
    the reads of the properties' collect intervals.
    """

    names: ClassVar[tuple[str, ...]]
    config_type: ClassVar[type[msgspec.Struct]]
    visitor_type: ClassVar[type[msgspec.Struct]]
    # The longest wait (seconds) before a failed device is tried again; the wait doubles from 0.5 s up to it. A
    # protocol whose devices cost nothing to try again (their values are pushed to the gateway) may keep it short.
    max_backoff: ClassVar[float] = 30.0
    # The running gateway, set by the poller before open(); None when a protocol runs without one (a browser, a
    # test). For what a device needs of the node: its name, the eventbus login, supervised tasks.
    gateway: GatewayAPI | None = None
    # The gateway's data dir, set by the poller before open(), for files a protocol keeps (its own certificate, say,
    # under a folder named after the protocol); None where no gateway runs it.
    data_dir: Path | None = None
    _on_push: Callable[[ReadResult], None] | None = None

    def __init__(self, device: BoundDevice) -> None:
        self.device = device

    def on_push(self, receiver: Callable[[ReadResult], None] | None) -> None:
        """Where `push` delivers (the poller, before `open()`); None: nowhere."""
        self._on_push = receiver

    def push(self, result: ReadResult) -> None:
        """Values (and per-property failures) the device reported without being asked; never raises."""
        if self._on_push is not None:
            self._on_push(result)

    @classmethod
    @abc.abstractmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        """Model types (`int`, `float`, …) that a property read through this visitor can have."""

    @classmethod
    def check_visitor(cls, visitor: Any, model: PropertyModel) -> None:
        """Raise ConfigError when a visitor does not suit its property's model entry beyond the type (say, a
        ReadWrite property that the visitor has no way to write); checked when a file loads."""
        return None

    def plan(self, properties: Sequence[BoundProperty]) -> Any:
        """Build the read plan for a set of properties due together; the poller caches it per set."""
        return tuple(properties)

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect to the device (InitDevice)."""

    @abc.abstractmethod
    async def read(self, plan: Any) -> ReadResult:
        """Read the properties of a plan (GetDeviceData); raise ProtocolError when nothing could be read."""

    @abc.abstractmethod
    async def write(self, prop: BoundProperty, value: Any) -> None:
        """Write one value, already converted to the model type and checked (SetDeviceData)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Disconnect (StopDevice); must not raise."""
