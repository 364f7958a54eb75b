"""The sink contract (what a sink plugin implements); the core's delivery loop is gateway.sinks.manager.

A sink class serves one endpoint type as a route target (`register_sinks`): it names the type, its properties
Struct and the key of a route's `target_resource` it needs, and builds itself for a route from the converted
properties, that `target_resource` and a `SinkContext`. The core owns the rest: the outbox, the SinkRunner, retries,
ordering and counters.

A message enters a sink's outbox when the store commits it (the writer's group commit); from then on it is either
delivered or still in the outbox after any crash. Delivery is ordered and at least once: a batch is removed only
after the sink acknowledged all of it, and within one run nothing is sent twice.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from gateway.errors import FieldgateError
from gateway.resources.endpoints import DEFAULT_OLDER_FORM_TOPIC

if TYPE_CHECKING:
    from gateway.api import GatewayAPI

log = logging.getLogger(__name__)


class SinkError(FieldgateError):
    """A sink could not deliver a batch (target down, refused, timed out); the batch is retried."""


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    seq: int
    topic: str
    payload: bytes
    created: float


@dataclass(frozen=True, slots=True)
class SinkContext:
    """What a sink may need besides its properties: the node, the route it delivers for, the gateway API."""

    node_name: str
    namespace: str
    route_name: str  # the Route's name (an implied route's: its endpoint's)
    api: GatewayAPI


class Sink(abc.ABC):
    """A northbound target. `send` delivers a whole batch in order or raises SinkError."""

    name: ClassVar[str]  # the endpoint type it serves as a route target
    # The endpoint type's properties, converted at load (numbers given as strings accepted); set by every sink
    # registered through `register_sinks`.
    properties_type: ClassVar[type[msgspec.Struct]]
    target_resource: ClassVar[str] = ""  # the key of a route's target_resource it needs ("": none)
    target_resource_optional: ClassVar[bool] = False
    # Endpoints of another type naming this one with `properties.plugin` (configurations from before the type
    # existed) are read as this type with an implied route from this bus topic (or their `topic` property).
    older_form: ClassVar[bool] = False
    older_form_topic: ClassVar[str] = DEFAULT_OLDER_FORM_TOPIC
    description: ClassVar[str] = ""

    @classmethod
    def for_route(cls, properties: Any, target_resource: Mapping[str, str], context: SinkContext) -> Sink:
        """The sink delivering one route's outbox; `properties` is an instance of `properties_type`."""
        raise NotImplementedError(f"{cls.__name__} is not a route target")

    async def open(self) -> None:  # noqa: B027  (optional: most sinks connect lazily in send)
        """Prepare (connect lazily in `send` if the target may be down at start)."""

    @abc.abstractmethod
    async def send(self, batch: list[OutboxMessage]) -> None:
        """Deliver every message of the batch, in order; raise SinkError when not all were acknowledged."""

    async def close(self) -> None:  # noqa: B027  (optional)
        """Release connections; must not raise."""
