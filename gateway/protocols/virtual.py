"""The built-in `virtual` protocol: simulated devices so the whole flow runs with no hardware."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import Meta

from gateway.errors import ConfigError, ProtocolError
from gateway.hookspecs import hookimpl
from gateway.protocols.base import BoundDevice, BoundProperty, Protocol, ReadResult
from gateway.resources.durations import Duration
from gateway.resources.schema import Base


class VirtualConfig(Base, kw_only=True):
    seed: int | None = None


class Constant(Base, tag_field="generator", tag="constant", kw_only=True):
    value: Any


class Counter(Base, tag_field="generator", tag="counter", kw_only=True):
    start: float = 0
    step: float = 1


class Sine(Base, tag_field="generator", tag="sine", kw_only=True):
    amplitude: float = 1.0
    period: Annotated[Duration, Meta(description="seconds for one full wave")] = Duration(60.0)
    offset: float = 0.0


class Random(Base, tag_field="generator", tag="random", kw_only=True):
    minimum: float = 0.0
    maximum: float = 1.0
    integer: bool = False


class Memory(Base, tag_field="generator", tag="memory", kw_only=True):
    initial: Any = 0


class Fault(Base, tag_field="generator", tag="fault", kw_only=True):
    """A float that is no value, as a device with a broken sensor reports it (documents take no NaN literal)."""

    value: Literal["nan", "inf", "-inf"] = "nan"


Generator = Constant | Counter | Sine | Random | Memory | Fault
NUMBER_TYPES = frozenset({"int", "float", "double"})


def _visitor_types(gen: Generator) -> frozenset[str]:
    if isinstance(gen, Constant | Memory):
        value = gen.value if isinstance(gen, Constant) else gen.initial
        if isinstance(value, bool):
            return frozenset({"boolean", "string"})
        if isinstance(value, int):
            return NUMBER_TYPES | {"string", "boolean"} if value in (0, 1) else NUMBER_TYPES | {"string"}
        if isinstance(value, float):
            return frozenset({"float", "double", "string"})
        return frozenset({"string", "bytes"})
    if isinstance(gen, Counter):
        integral = float(gen.start).is_integer() and float(gen.step).is_integer()
        return NUMBER_TYPES if integral else frozenset({"float", "double"})
    if isinstance(gen, Random) and gen.integer:
        return NUMBER_TYPES
    return frozenset({"float", "double"})


class VirtualProtocol(Protocol):
    """Values from generators; `memory` properties hold what is written."""

    names: ClassVar[tuple[str, ...]] = ("virtual",)
    config_type: ClassVar[type[msgspec.Struct]] = VirtualConfig
    visitor_type: ClassVar[type[msgspec.Struct]] = Generator  # type: ignore[assignment]

    def __init__(self, device: BoundDevice) -> None:
        super().__init__(device)
        seed = device.config.seed if isinstance(device.config, VirtualConfig) else None
        self._random = random.Random(seed)
        self._counters: dict[str, float] = {}
        self._memory: dict[str, Any] = {}
        self._started = time.monotonic()

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        if isinstance(visitor, Random) and visitor.minimum > visitor.maximum:
            raise ConfigError("random: minimum is above maximum")
        if isinstance(visitor, Sine) and visitor.period <= 0:
            raise ConfigError("sine: period must be above 0")
        return _visitor_types(visitor)

    async def open(self) -> None:
        self._started = time.monotonic()

    async def read(self, plan: Any) -> ReadResult:
        props: Iterable[BoundProperty] = plan
        now = time.monotonic() - self._started
        values = {}
        for prop in props:
            values[prop.name] = self._value(prop, now)
        return ReadResult(values)

    def _value(self, prop: BoundProperty, now: float) -> Any:
        gen = prop.visitor
        if isinstance(gen, Sine):
            return gen.offset + gen.amplitude * math.sin(2 * math.pi * now / gen.period)
        if isinstance(gen, Counter):
            value = self._counters.get(prop.name, gen.start)
            self._counters[prop.name] = value + gen.step
            return int(value) if float(value).is_integer() and prop.model.type == "int" else value
        if isinstance(gen, Random):
            if gen.integer:
                return self._random.randint(math.ceil(gen.minimum), math.floor(gen.maximum))
            return self._random.uniform(gen.minimum, gen.maximum)
        if isinstance(gen, Memory):
            return self._memory.get(prop.name, gen.initial)
        if isinstance(gen, Fault):
            return float(gen.value)
        return gen.value

    async def write(self, prop: BoundProperty, value: Any) -> None:
        if not isinstance(prop.visitor, Memory):
            raise ProtocolError(f"{prop.name}: a {type(prop.visitor).__name__.lower()} generator cannot be written; "
                              "use `generator: memory`")
        self._memory[prop.name] = value

    async def close(self) -> None:
        return None


@hookimpl
def register_protocols() -> list[type[Protocol]]:
    return [VirtualProtocol]
