"""System updates of the appliance through the registry: a real registry on loopback, the image booted in qemu (OVMF,
systemd-boot, RAUC, reboots kept in the same qemu) and joined to it (the machine of the boot test, after it), OS
bundles made from the build's bundle and signed with the build's key, handed out by UpgradeTasks.

- A bundle whose gateway service is broken: the guest installs it into slot b, reboots into it on trial, its gateway
  never answers, the health gate reboots, systemd-boot finds slot b's try used and boots slot a again by itself; the
  task reports the node rolled back, with the reason.
- A good bundle: installed into slot b, the trial boot is healthy, the slot is kept (no counter left), the task
  succeeds and the node reports system version and slot b; after a power cut it comes back on slot b.
- qemu killed while RAUC writes the other slot during an update: the next boot comes up healthy on the slot that
  ran, the store passes `PRAGMA integrity_check` and holds every outbox message counted before the cut, and the task
  reports the node rolled back.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.image.appliance import (
    BOOT_TIMEOUT,
    HELD_OUTBOX,
    PASSWORD,
    Machine,
    esp_offset,
    login,
    os_bundle,
    rebundle,
    store_on_disk,
)
from tests.image.conftest import NODE
from tests.registry.conftest import Registry

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(2700)]

TASK_DEADLINE = "30s"  # how long a new slot's gateway has to answer healthy on its trial boot, once it started
UPDATE_TIMEOUT = 900.0  # download, install, reboot, trial and, for the broken one, the way back


def system(registry: Registry) -> dict[str, Any] | None:
    node = registry.nodes().get(NODE)
    if node is None or node["status"] != "healthy":
        return None
    found: dict[str, Any] | None = node["info"].get("system")
    return found


def wait_system(registry: Registry, machine: Machine, timeout: float, **expected: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        seen = system(registry)
        if seen is not None and all(seen.get(key) == value for key, value in expected.items()):
            return seen
        time.sleep(2)
    raise AssertionError(f"node {NODE} did not report system {expected} within {timeout:.0f} s (last: {seen});\n"
                         f"console:\n{machine.console()}")


def wait_until_rebooted(registry: Registry, machine: Machine, before: dict[str, Any]) -> dict[str, Any]:
    """The system the node reports from a boot after the one it reported in `before`."""
    deadline = time.monotonic() + 180
    seen: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        seen = system(registry)
        if seen is not None and seen.get("booted_at") != before.get("booted_at"):
            return seen
        time.sleep(2)
    raise AssertionError(f"node {NODE} reported no new boot within 180 s (last: {seen});\n"
                         f"console:\n{machine.console()}")


def esp_entries(machine: Machine) -> list[str]:
    """The boot entries on the machine's EFI partition, read from its disk file."""
    listing = subprocess.run(["mdir", "-b", "-i", f"{machine.disk}@@{esp_offset(machine.disk)}", "::/loader/entries"],
                             capture_output=True, text=True, timeout=30, check=False).stdout
    return sorted(Path(line.strip()).name for line in listing.splitlines() if line.strip().endswith(".conf"))


def create(registry: Registry, bundle: Path, version: str) -> str:
    created = registry.cli("upgrade", "create", "--version", version, "--os-bundle", str(bundle), "--nodes", NODE,
                           "--deadline", TASK_DEADLINE, "--json")
    task: str = json.loads(created.stdout)["id"]
    return task


def node_state(registry: Registry, task: str) -> dict[str, Any]:
    view = json.loads(registry.cli("upgrade", "show", task, "--json").stdout)
    state: dict[str, Any] = view["nodes"][0]
    return state


def wait_final(registry: Registry, machine: Machine, task: str) -> dict[str, Any]:
    deadline = time.monotonic() + UPDATE_TIMEOUT
    state: dict[str, Any] = {}
    while time.monotonic() < deadline:
        state = node_state(registry, task)
        if state["status"] not in ("pending", "assigned", "upgrading"):
            return state
        time.sleep(2)
    raise AssertionError(f"task {task} did not finish within {UPDATE_TIMEOUT:.0f} s: {state};\n"
                         f"console:\n{machine.console()}")


def test_os_bundles_roll_back_when_broken_forward_when_good_and_survive_a_power_cut(
        fleet: tuple[Registry, Machine], appliance_image: Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    registry, machine = fleet
    built = os_bundle(appliance_image)
    first = wait_system(registry, machine, 180, slot="a")
    work = tmp_path_factory.mktemp("bundles")

    # 1. a bundle whose gateway never starts: back on slot a by itself
    started = time.monotonic()
    broken = rebundle(built, work, "9.0-broken", break_gateway=True)
    state = wait_final(registry, machine, create(registry, broken, "9.0-broken"))
    print(f"broken bundle: {state['status']} after {time.monotonic() - started:.0f} s: {state['reason']}")
    assert state["status"] == "failed-rolled-back", state
    assert "the new system 9.0-broken in slot b did not come up healthy" in state["reason"], state
    assert f"slot a ({first['version']}) booted again by itself" in state["reason"], state
    wait_system(registry, machine, 120, slot="a", version=first["version"])

    # 2. a good bundle: slot b on trial, kept
    started = time.monotonic()
    good = rebundle(built, work, "9.1")
    state = wait_final(registry, machine, create(registry, good, "9.1"))
    print(f"good bundle: {state['status']} after {time.monotonic() - started:.0f} s: {state['reason']}")
    assert state == {**state, "status": "succeeded", "reason": "system 9.1 runs from slot b"}
    before = wait_system(registry, machine, 120, slot="b", version="9.1")

    # 3. the power goes while RAUC writes slot a; the next boot is slot b's, which was kept (its entry blessed)
    with contextlib.closing(login(machine, PASSWORD)) as client:
        def held() -> int:
            depth: int = client.get("/api/v1/status").json()["sinks"][HELD_OUTBOX]["outbox_depth"]
            return depth

        next_bundle = rebundle(built, work, "9.2")
        task = create(registry, next_bundle, "9.2")
        deadline = time.monotonic() + UPDATE_TIMEOUT
        # RAUC marks the slot it writes unbootable first (its entry gets no tries left): read from the disk here
        while "fieldgate-a+0.conf" not in (entries := esp_entries(machine)):
            assert time.monotonic() < deadline, f"the update did not start writing slot a: {entries}; " \
                                                f"{node_state(registry, task)}"
            time.sleep(0.05)
        committed = held()
    machine.power_cut()
    assert "fieldgate-a+0.conf" in esp_entries(machine)  # kept: slot a cannot boot half written
    integrity, outboxes = store_on_disk(machine.disk, tmp_path_factory.mktemp("os-store"))
    print(f"power cut during an update with {committed} messages counted in the held outbox: "
          f"{outboxes.get(HELD_OUTBOX)} on the disk")
    assert integrity == "ok"
    assert outboxes.get(HELD_OUTBOX, 0) >= committed, outboxes
    machine.power_on()
    machine.wait_healthy(BOOT_TIMEOUT)
    state = wait_final(registry, machine, task)
    assert state["status"] == "failed-rolled-back", state
    assert "the update was cut off while slot a was being written" in state["reason"], state
    after = wait_until_rebooted(registry, machine, before)
    assert (after["slot"], after["version"]) == ("b", "9.1"), after
