"""Protocols that misbehave on purpose, registered as a plugin by the tests that need them."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

import msgspec

from gateway.errors import DeviceSilent, ProtocolError
from gateway.hookspecs import hookimpl
from gateway.protocols.base import BoundProperty, Protocol, ReadResult
from gateway.resources.schema import Base


class TestConfig(Base, kw_only=True):
    fail_opens: int = 0


class TestVisitor(Base, kw_only=True):
    value: float = 1.0


class _Base(Protocol):
    config_type: ClassVar[type[msgspec.Struct]] = TestConfig
    visitor_type: ClassVar[type[msgspec.Struct]] = TestVisitor
    opens: ClassVar[int] = 0

    @classmethod
    def visitor_types(cls, visitor: Any) -> frozenset[str]:
        return frozenset({"float", "double", "int"})

    async def open(self) -> None:
        type(self).opens += 1

    async def write(self, prop: BoundProperty, value: Any) -> None:
        raise ProtocolError("read-only test device")

    async def close(self) -> None:
        return None


class HangingProtocol(_Base):
    """Never answers a read."""

    names: ClassVar[tuple[str, ...]] = ("test-hang",)

    async def read(self, plan: Any) -> ReadResult:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


class FailingProtocol(_Base):
    """Every read fails."""

    names: ClassVar[tuple[str, ...]] = ("test-fail",)

    async def read(self, plan: Any) -> ReadResult:
        raise ProtocolError("device answered with exception code 4")


class BlockingProtocol(_Base):
    """Reads take 50 ms of awaiting (a slow device), which must not slow down the others."""

    names: ClassVar[tuple[str, ...]] = ("test-slow",)

    async def read(self, plan: Any) -> ReadResult:
        await asyncio.sleep(0.05)
        return ReadResult({p.name: p.visitor.value for p in plan})


class FlakyProtocol(_Base):
    """The first `fail_opens` connection attempts fail, then it works: a device that comes back."""

    names: ClassVar[tuple[str, ...]] = ("test-flaky",)
    attempts: ClassVar[dict[str, int]] = {}

    async def open(self) -> None:
        n = self.attempts[self.device.id] = self.attempts.get(self.device.id, 0) + 1
        if n <= self.device.config.fail_opens:
            raise ProtocolError(f"connection refused (attempt {n})")

    async def read(self, plan: Any) -> ReadResult:
        return ReadResult({p.name: p.visitor.value for p in plan})


class EagerFlakyProtocol(FlakyProtocol):
    """A flaky device that costs nothing to try again (its values are pushed): its reconnect backoff stays short."""

    names: ClassVar[tuple[str, ...]] = ("test-flaky-eager",)
    max_backoff: ClassVar[float] = 0.2


class BuggyProtocol(_Base):
    """Raises an unexpected exception type, as a plugin with a bug would."""

    names: ClassVar[tuple[str, ...]] = ("test-buggy",)

    async def read(self, plan: Any) -> ReadResult:
        raise KeyError("oops")


class QuietProtocol(_Base):
    """Reads bring nothing new and no error, as a device that pushes its values has not sent any yet."""

    names: ClassVar[tuple[str, ...]] = ("test-quiet",)

    async def read(self, plan: Any) -> ReadResult:
        return ReadResult()


class PushProtocol(_Base):
    """A device that sends its values itself: a read gives what was pushed since the last one, or raises
    DeviceSilent while the test keeps the device `silent`."""

    names: ClassVar[tuple[str, ...]] = ("test-push",)
    pushed: ClassVar[dict[str, list[float]]] = {}
    silent: ClassVar[set[str]] = set()
    gateways: ClassVar[list[Any]] = []

    async def open(self) -> None:
        await super().open()
        self.gateways.append(self.gateway)

    async def read(self, plan: Any) -> ReadResult:
        if self.device.id in self.silent:
            raise DeviceSilent("no message for 5 s")
        values = self.pushed.pop(self.device.id, [])
        return ReadResult({p.name: values[-1] for p in plan} if values else {})


class FilesProtocol(_Base):
    """Keeps a file in the gateway's data dir, as a protocol with a certificate of its own does."""

    names: ClassVar[tuple[str, ...]] = ("test-files",)

    async def open(self) -> None:
        if self.data_dir is None:
            raise ProtocolError("no data dir")
        (self.data_dir / "test-files").mkdir(exist_ok=True)
        (self.data_dir / "test-files" / self.device.resource.name).write_text("opened")

    async def read(self, plan: Any) -> ReadResult:
        return ReadResult({p.name: p.visitor.value for p in plan})


class PushingProtocol(_Base):
    """Reads give the visitor's value; soon after the first read it pushes a value that does not convert, then twice
    the visitors' values (a subscription)."""

    names: ClassVar[tuple[str, ...]] = ("test-pushing",)

    def _notify(self) -> None:
        self.push(ReadResult({"count": "not a number"}))
        self.push(ReadResult({p.name: p.visitor.value * 2 for p in self.device.properties.values()}))

    async def read(self, plan: Any) -> ReadResult:
        asyncio.get_running_loop().call_later(0.1, self._notify)
        return ReadResult({p.name: p.visitor.value for p in plan})


@hookimpl
def register_protocols() -> list[type[Protocol]]:
    return [HangingProtocol, FailingProtocol, BlockingProtocol, FlakyProtocol, EagerFlakyProtocol, BuggyProtocol,
            QuietProtocol, PushProtocol, FilesProtocol, PushingProtocol]
