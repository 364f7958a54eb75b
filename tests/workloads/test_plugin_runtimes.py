"""Runtimes from plugins: one that runs, one that cannot run on this node, one that is not a runtime at all; each
is closed when the workloads stop, and one failing to close is logged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import pluggy
import pytest

from gateway.errors import WorkloadError
from gateway.hookspecs import hookimpl
from gateway.testing import wait_until
from gateway.workloads.model import Instance, InstanceSpec, Runtime
from gateway.workloads.process import ProcessRuntime
from tests.workloads.conftest import PYTHON, Node


class Sandbox(ProcessRuntime):
    """A plugin's runtime built on the process one: the app sees it through the environment."""

    name: ClassVar[str] = "sandbox"
    closed: ClassVar[int] = 0

    async def start(self, spec: InstanceSpec) -> Instance:
        spec.env["SANDBOXED"] = "yes"
        return await super().start(spec)

    async def close(self) -> None:
        Sandbox.closed += 1
        await super().close()


class Hypervisor(Runtime):
    name: ClassVar[str] = "vm"

    def unavailable(self) -> str | None:
        return "no hypervisor on this node"

    async def start(self, spec: InstanceSpec) -> Instance:
        raise AssertionError("never asked to start anything")

    async def close(self) -> None:
        raise WorkloadError("the hypervisor's socket is gone")


class NotARuntime:
    name = "bogus"


class RuntimesPlugin:
    @hookimpl
    def register_runtimes(self) -> list[type[Any]]:
        return [Sandbox, Hypervisor, NotARuntime]


async def test_plugin_runtimes_run_or_fail_their_workloads_clearly(
        plugin_manager: pluggy.PluginManager, start_node: Callable[..., Any], caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    plugin_manager.register(RuntimesPlugin(), name="test-runtimes")
    node: Node = await start_node(f"""\
kind: Workload
name: boxed
runtime: sandbox
command: [{PYTHON}, -c, "import os, time; print('sandboxed', os.environ['SANDBOXED'], flush=True); time.sleep(60)"]
---
kind: Workload
name: virtual
runtime: vm
image: appliance.qcow2
---
kind: Workload
name: odd
runtime: bogus
image: x
""")

    async def logged() -> list[str] | None:
        logs = (await node.api.get("/api/v1/workloads/default/boxed/logs")).json()
        return [line["line"] for line in logs["lines"]] or None

    assert await wait_until(logged) == ["sandboxed yes"]
    assert (await node.workload("boxed"))["status"] == "running"
    virtual = await node.workload("virtual")
    assert (virtual["status"], virtual["reason"]) == ("failed", "runtime 'vm' cannot run here: no hypervisor on "
                                                                "this node")
    odd = await node.workload("odd")
    assert odd["status"] == "failed" and odd["reason"].startswith("runtime 'bogus' is not available on this node")
    assert "is not a gateway.workloads.model.Runtime" in odd["reason"]
    status = (await node.api.get("/api/v1/status")).json()
    installed = set(status["workloads"]["runtimes"]) - {"container"}  # the first-party plugin, when installed
    assert installed == {"process", "sandbox", "vm"}
    assert status["workloads"]["total"] == 3 and status["workloads"]["failed"] == 2

    monkeypatch.setattr(Sandbox, "closed", 0)
    with caplog.at_level(logging.WARNING, logger="gateway.workloads.supervisor"):
        await node.gateway.workloads.stop()
    assert Sandbox.closed == 1
    assert "runtime vm did not close cleanly: the hypervisor's socket is gone" in caplog.messages
