"""Read planning: the properties due together, grouped by object into ReadPropertyMultiple requests whose answers
fit in what the device can send in one APDU (a device that cannot segment cannot send more)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fieldgate_bacnet.config import BacnetVisitor

ACK_HEADER = 3  # a ComplexACK's header before its service data
OBJECT_OVERHEAD = 7  # the object identifier (5) and the opening and closing tags of its results (2)
PROPERTY_OVERHEAD = 4  # the property identifier (2) and the opening and closing tags of its value (2)
INDEX_OVERHEAD = 5
# Encoded answer sizes of properties that are small whatever the device (a REAL, an enumeration, a few flags);
# anything else may be a string or an array: counted generously.
SMALL_VALUES = {
    "present-value": 10, "status-flags": 4, "event-state": 3, "out-of-service": 2, "reliability": 3, "units": 4,
    "cov-increment": 5, "relinquish-default": 10, "number-of-states": 5, "priority": 10, "polarity": 2,
    "min-pres-value": 5, "max-pres-value": 5, "high-limit": 5, "low-limit": 5, "deadband": 5,
}
OTHER_VALUE = 80
PRIORITY_ARRAY = 16 * 10


def answer_size(visitor: BacnetVisitor) -> int:
    """At most how many bytes the answer about one property takes in a ReadPropertyMultiple-ACK (an error is
    smaller than any of these)."""
    if visitor.property == "priority-array":
        value = PRIORITY_ARRAY if visitor.index is None else SMALL_VALUES["present-value"]
    elif visitor.index == 0:
        value = 5
    else:
        value = SMALL_VALUES.get(str(visitor.property), OTHER_VALUE)
    return PROPERTY_OVERHEAD + (INDEX_OVERHEAD if visitor.index is not None else 0) + value


@dataclass(frozen=True, eq=False)
class Request:
    """One ReadPropertyMultiple: the properties of one or more objects, by name, in the order asked."""

    names: tuple[str, ...]
    visitors: tuple[BacnetVisitor, ...]
    size: int  # the estimated size of its answer

    def describe(self) -> str:
        objects = dict.fromkeys(v.object_id for v in self.visitors)
        shown = ", ".join(list(objects)[:3]) + (f" and {len(objects) - 3} more" if len(objects) > 3 else "")
        return f"{len(self.names)} properties of {shown}"


@dataclass(frozen=True, eq=False)
class ReadPlan:
    """The requests of one read: ReadPropertyMultiple ones (`multiple`) or one ReadProperty per property."""

    requests: tuple[Request, ...]
    budget: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for request in self.requests for name in request.names)


def plan_reads(properties: Sequence[tuple[str, BacnetVisitor]], budget: int) -> ReadPlan:
    """Group properties by object (in the order first named) and fill requests up to `budget` answer bytes each; a
    property too large for any budget still gets a request of its own (the device says if it cannot answer)."""
    by_object: dict[str, list[tuple[str, BacnetVisitor]]] = {}
    for name, visitor in properties:
        by_object.setdefault(visitor.object_id, []).append((name, visitor))
    requests: list[Request] = []
    names: list[str] = []
    visitors: list[BacnetVisitor] = []
    size = ACK_HEADER
    for group in by_object.values():
        object_named = False  # whether the current request holds this object already
        for name, visitor in group:
            more = answer_size(visitor) + (0 if object_named else OBJECT_OVERHEAD)
            if visitors and size + more > budget:
                requests.append(Request(tuple(names), tuple(visitors), size))
                names, visitors, size = [], [], ACK_HEADER
                more = answer_size(visitor) + OBJECT_OVERHEAD
            names.append(name)
            visitors.append(visitor)
            size += more
            object_named = True
    if visitors:
        requests.append(Request(tuple(names), tuple(visitors), size))
    return ReadPlan(tuple(requests), budget)


def split(request: Request) -> tuple[Request, Request]:
    """A request cut in two halves (its answer was too long for the device after all)."""
    half = len(request.names) // 2
    first = Request(request.names[:half], request.visitors[:half], (request.size + 1) // 2)
    second = Request(request.names[half:], request.visitors[half:], (request.size + 1) // 2)
    return first, second
