"""The appliance image: built by image/build.sh, provisioned, booted in qemu with OVMF, used over the network.

Needs root and the tools in tests/image/appliance.py (scripts/bootstrap.sh installs them as root); otherwise the
tests are skipped and the reason names what is missing. FIELDGATE_IMAGE=<file>.img.zst boots an image built before
instead of building one; the image is built once per test run and shared by the tests here. The build reuses the
Debian root kept in build/image-cache while its package list is unchanged (CI starts without it and debootstraps).

Asserted: the size budget (under 100 MB compressed) and the layout, and that the gateway answers its health check
within a bound a loaded 2-core CI box meets with margin: 120 s from power-on at the first boot (provisioning
included), 90 s after a power cut. On an idle 2-core box the image takes about 40 s and 27 s; measured on the
2-core box at load average 4-5 with other test runs: 57 s and 48 s. CI runs this beside the whole suite, at a load
of 8 or more, so the bounds leave about twice the loaded figures (60 s after a power cut left 1.26x, too little);
a boot that waits for the network to be online (up to 120 s) or hangs on a unit still fails them. Issue 20's goal,
20 s from power-on (HEALTHY_GOAL), is not reached yet: each measured boot is printed beside it with the guest's own
boot report (systemd-analyze from its console), and the goal is asserted by the benchmark
tests/benchmarks/test_image_boot.py.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.image.appliance import (
    BOOT_TIMEOUT,
    HELD_OUTBOX,
    PASSWORD,
    Machine,
    esp_offset,
    login,
    os_bundle,
    partitions,
    store_on_disk,
)

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(1200)]

FIRST_BOOT_WITHIN = 120.0  # seconds from power-on to the first /healthz answer, provisioning included
BOOT_WITHIN = 90.0  # the same after a power cut (provisioned before)
MAX_COMPRESSED_BYTES = 100_000_000
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


def test_provisioned_admin_logs_in_and_sees_the_devices(booted: Machine) -> None:
    assert httpx.get(f"{booted.url}/api/v1/devices", timeout=30).status_code == 401
    with pytest.raises(PermissionError, match="401"):
        login(booted, "not-the-password")
    with contextlib.closing(login(booted, PASSWORD)) as client:
        devices = client.get("/api/v1/devices")
        assert devices.status_code == 200
        assert sorted(d["name"] for d in devices.json()) == ["boiler-1", "meter-1"]
        deadline = time.monotonic() + 60
        seen: list[object] = []
        while time.monotonic() < deadline and len(set(map(str, seen))) < 2:
            meter = client.get("/api/v1/devices/default/meter-1").json()
            seen.append(meter["twin"]["energy"]["reported"])
            time.sleep(1.5)
        assert len(set(map(str, seen))) >= 2, f"meter-1 energy never changed: {seen}"  # polled live
        assert all(isinstance(v, int) and v >= 1000 for v in seen if v is not None)
        boiler = client.get("/api/v1/devices/default/boiler-1").json()
        assert boiler["state"] == "online"
        assert boiler["twin"]["setpoint"]["reported"] == 62  # the provisioned desired value, written back
        assert 52 <= boiler["twin"]["temperature"]["reported"] <= 68
        status = client.get("/api/v1/status").json()
        assert status["eventbus"]["connected"] is True  # the image's mosquitto


def test_the_image_runs_this_version_with_every_plugin(booted: Machine) -> None:
    with contextlib.closing(login(booted, PASSWORD)) as client:
        plugins = {p["name"]: p for p in client.get("/api/v1/plugins").json()}
        status = client.get("/api/v1/status").json()
        metrics = client.get("/metrics").text
    assert {"modbus", "influxdb", "homeassistant", "sparkplug"} <= set(plugins)
    from gateway import __version__
    assert status["version"] == __version__
    # /var/lib/fieldgate is the data partition (512 MiB), not a directory on the root file system.
    total = re.search(r"^fieldgate_data_dir_disk_total_bytes(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    assert total, metrics[:1000]
    assert 450 << 20 < float(total[1]) < 520 << 20


def test_the_image_is_under_its_size_budget_with_two_root_slots(appliance_image: Path, booted: Machine) -> None:
    size = appliance_image.stat().st_size
    print(f"image {size / 1e6:.1f} MB compressed, {booted.disk.stat().st_size >> 20} MiB disk")
    assert size < MAX_COMPRESSED_BYTES, f"{appliance_image.name}: {size / 1e6:.1f} MB compressed"
    parts = partitions(booted.disk)
    assert list(parts) == ["esp", "root-a", "root-b", "data"], parts
    assert parts["root-a"]["type"] == parts["root-b"]["type"] == ROOT_TYPE
    assert parts["root-a"]["size"] == parts["root-b"]["size"]
    with booted.disk.open("rb") as disk:
        disk.seek(int(str(parts["root-a"]["offset"])))
        superblock = disk.read(96)
        disk.seek(int(str(parts["root-b"]["offset"])))
        empty = disk.read(4096)
    assert superblock[:4] == b"hsqs", superblock[:4]  # a squashfs, read-only and compressed
    assert superblock[20:22] == (6).to_bytes(2, "little")  # zstd
    used = int.from_bytes(superblock[40:48], "little")
    assert used * 2 <= int(str(parts["root-a"]["size"])), "no room in a slot for a next version twice as big"
    assert empty == bytes(4096)  # slot b waits for a system update
    table = json.loads(subprocess.run(["sfdisk", "--json", str(booted.disk)], capture_output=True, text=True,
                                      check=True, timeout=30).stdout)["partitiontable"]["partitions"]
    uuids = {p["name"]: p["uuid"].lower() for p in table}
    esp = f"{booted.disk}@@{esp_offset(booted.disk)}"
    for slot in "ab":
        entry = subprocess.run(["mtype", "-i", esp, f"::/loader/entries/fieldgate-{slot}.conf"], capture_output=True,
                               text=True, check=True, timeout=30).stdout
        assert f"linux /{slot}/vmlinuz" in entry
        assert f"root=partuuid={uuids[f'root-{slot}']} " in entry.lower()
        assert f"fieldgate.data=partuuid={uuids['data']} " in entry.lower()
        assert f" rauc.slot={slot} " in entry and " panic=10 " in entry  # RAUC's booted slot; a panic reboots
        assert f"sort-key fieldgate-{'ab'.index(slot) + 1}\n" in entry  # slot a boots first
    loader = subprocess.run(["mtype", "-i", esp, "::/loader/loader.conf"], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    assert "timeout 0" in loader and "default" not in loader  # the order is the entries' sort keys and counters'


def test_the_system_bundle_beside_the_image_is_signed_for_it(appliance_image: Path, booted: Machine,
                                                            tmp_path: Path) -> None:
    """The build's bundle passes the image's own RAUC configuration and keyring, read out of its root slot (slot a
    never changes while it runs)."""
    bundle = os_bundle(appliance_image)
    assert bundle.stat().st_size < MAX_COMPRESSED_BYTES
    root = partitions(booted.disk)["root-a"]
    slot = tmp_path / "root.squashfs"
    subprocess.run(["dd", f"if={booted.disk}", f"of={slot}", "bs=1M", f"skip={root['offset']}",
                    f"count={root['size']}", "iflag=skip_bytes,count_bytes", "status=none"], check=True, timeout=120)
    etc = tmp_path / "root"
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(etc), str(slot), "etc/rauc"], check=True, timeout=120,
                   capture_output=True)
    config = (etc / "etc" / "rauc" / "system.conf").read_text()
    assert "compatible=fieldgate-appliance-amd64" in config and "bootloader=custom" in config
    info = subprocess.run(["rauc", "--conf", str(etc / "etc" / "rauc" / "system.conf"), "--keyring",
                           str(etc / "etc" / "rauc" / "keyring.pem"), "info", "--output-format=json", str(bundle)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert info.returncode == 0, info.stderr
    manifest = json.loads(info.stdout)
    assert manifest["compatible"] == "fieldgate-appliance-amd64"
    assert [next(iter(image)) for image in manifest["images"]] == ["rootfs"]


def test_the_gateway_answers_soon_after_power_on(booted: Machine) -> None:
    report = booted.boot_report(120)
    print(f"{booted.healthy_line('first boot, provisioning included')}; the guest's boot report:\n{report}")
    assert "Startup finished" in report and "fieldgate.service" in report
    assert booted.healthy_after <= FIRST_BOOT_WITHIN, \
        f"healthy {booted.healthy_after:.1f} s after power-on, over {FIRST_BOOT_WITHIN:.0f} s:\n{report}"


def test_after_a_power_cut_the_provisioned_gateway_comes_back(booted: Machine,
                                                              tmp_path_factory: pytest.TempPathFactory) -> None:
    """qemu killed (no shutdown) while the store writes five reports a second, each into the history and an outbox
    whose target is never there: the store on the disk is whole and holds every outbox message the gateway had
    counted as committed; the read-only root and the data partition's layers bring back the same node."""
    with contextlib.closing(login(booted, PASSWORD)) as client:
        assert client.get("/api/v1/devices").status_code == 200

        def held() -> int:
            depth: int = client.get("/api/v1/status").json()["sinks"][HELD_OUTBOX]["outbox_depth"]
            return depth

        deadline = time.monotonic() + 60
        while held() < 50 and time.monotonic() < deadline:
            time.sleep(0.5)
        committed = held()  # committed, and not delivered: the target is never there
        assert committed >= 50, f"the held outbox did not grow: {committed} messages"
        time.sleep(0.3)  # a commit or so more under way when the power goes
    booted.power_cut()
    integrity, outboxes = store_on_disk(booted.disk, tmp_path_factory.mktemp("store"))
    print(f"power cut with {committed} messages counted in the held outbox: {outboxes.get(HELD_OUTBOX)} on the disk")
    assert integrity == "ok"
    assert outboxes.get(HELD_OUTBOX, 0) >= committed, outboxes
    booted.power_on()
    health = booted.wait_healthy(BOOT_TIMEOUT)
    assert health == {"status": "ok", "node": "boot-test"}  # /etc/fieldgate from the data partition's layer
    report = booted.boot_report(120)
    print(f"{booted.healthy_line('after a power cut')}; the guest's boot report:\n{report}")
    assert booted.healthy_after <= BOOT_WITHIN, \
        f"healthy {booted.healthy_after:.1f} s after power-on, over {BOOT_WITHIN:.0f} s:\n{report}"
    with contextlib.closing(login(booted, PASSWORD)) as client:  # the store on the data partition
        devices = client.get("/api/v1/devices")
        assert sorted(d["name"] for d in devices.json()) == ["boiler-1", "meter-1"]
        status = client.get("/api/v1/status").json()
        assert status["eventbus"]["connected"] is True
        assert status["sinks"][HELD_OUTBOX]["outbox_depth"] >= committed  # the outbox read back at start
