"""The appliance image, built once per test run, and one machine booted from it, joined to a registry on loopback:
shared by the boot test and the system update test (booting in qemu without KVM is what costs)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image import appliance
from tests.image.appliance import BOOT_TIMEOUT, Machine, provisioned_machine, provisioning
from tests.registry.conftest import Registry, stop

NODE = "boot-test"  # the node's name at the registry, as its Gateway document's


@pytest.fixture(scope="session")
def appliance_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compressed image: FIELDGATE_IMAGE, or one built now (once per test run), its system bundle beside it."""
    return appliance.appliance_image(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="session")
def fleet(appliance_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Machine]]:
    """The registry on loopback and the provisioned image joined to it as NODE, healthy after its first boot (a
    reboot of the guest boots it again in the same qemu). The guest reaches the host's loopback as 10.0.2.2 (qemu's
    user network); its /etc/hosts, on the data partition's layer, names the host as the registry's server
    certificate does."""
    registry = Registry(tmp_path_factory.mktemp("registry") / "registry")
    registry.start()
    machine: Machine | None = None
    try:
        host = socket.gethostname()
        provision = provisioning()
        provision["registry"] = {"url": f"https://{host}:{registry.port}", "token": registry.token(), "name": NODE}
        hosts = f"127.0.0.1 localhost\n127.0.1.1 fieldgate\n10.0.2.2 {host}\n".encode()
        machine = provisioned_machine(appliance_image, tmp_path_factory.mktemp("boot"), provision,
                                      data_files={"overlay/etc/upper/hosts": hosts}, reboots=True)
        health = machine.wait_healthy(BOOT_TIMEOUT)
        print(machine.healthy_line("first boot, provisioning included"))
        assert health == {"status": "ok", "node": NODE}  # the provisioned Gateway document runs
        yield registry, machine
    finally:
        if machine is not None:
            machine.stop()
        if registry.process is not None:
            stop(registry.process)


@pytest.fixture(scope="session")
def booted(fleet: tuple[Registry, Machine]) -> Machine:
    return fleet[1]
