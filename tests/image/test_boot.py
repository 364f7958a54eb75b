"""The appliance image: built by image/build.sh, provisioned, booted in qemu with OVMF, used over the network.

Needs root and the tools below (scripts/bootstrap.sh installs them as root); otherwise the tests are skipped and
the reason names what is missing. FIELDGATE_IMAGE=<file>.img.zst boots an image built before instead of building
one; the image is built once per test run and shared by the tests here. The build reuses the Debian root kept in
build/image-cache while its package list is unchanged.

The image's budgets are asserted here: under 100 MB compressed, and the gateway answering its health check within
20 s of power-on in qemu without KVM (the boot's own report, `systemd-analyze` from the guest's console, is printed
beside the figure).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.testing import free_port
from tests.conftest import REPO

pytestmark = [pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(1200)]

BUILD_TOOLS = {"debootstrap": "debootstrap", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools",
               "sfdisk": "fdisk", "zstd": "zstd", "mkfs.ext4": "e2fsprogs"}
BOOT_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "mcopy": "mtools", "sfdisk": "fdisk", "zstd": "zstd"}
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
PASSWORD = "field-gate-boot-test"
BOOT_TIMEOUT = 360.0
HEALTHY_WITHIN = 20.0  # seconds from power-on to the first /healthz answer
MAX_COMPRESSED_BYTES = 100_000_000
ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


def missing(tools: dict[str, str]) -> list[str]:
    return [f"{tool} ({package})" for tool, package in tools.items() if shutil.which(tool) is None]


def require(condition: bool, reason: str) -> None:
    if not condition:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def appliance_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compressed image: FIELDGATE_IMAGE, or one built now (once per test run)."""
    given = os.environ.get("FIELDGATE_IMAGE")
    if given:
        assert Path(given).is_file(), f"FIELDGATE_IMAGE={given}: no such file"
        return Path(given)
    require(os.geteuid() == 0, "image build needs root (debootstrap, chroot, file ownership in the image)")
    absent = missing(BUILD_TOOLS)
    require(not absent, f"image build needs: {', '.join(absent)}; scripts/bootstrap.sh installs them as root")
    out = tmp_path_factory.mktemp("image")
    log = out / "build.log"
    started = time.monotonic()
    with log.open("wb") as output:
        result = subprocess.run([str(REPO / "image" / "build.sh"), "--out", str(out), "--cache",
                                 str(REPO / "build" / "image-cache")], stdout=output, stderr=subprocess.STDOUT,
                                timeout=900, check=False)
    text = log.read_text(errors="replace")
    assert result.returncode == 0, f"image/build.sh failed:\n{text[-3000:]}"
    print(f"image built in {time.monotonic() - started:.0f} s")
    images = sorted(out.glob("fieldgate-*-amd64.img.zst"))
    assert len(images) == 1, f"expected one image in {out}: {images}"
    print(next(line for line in reversed(text.splitlines()) if "done:" in line))
    return images[0]


def unpack(image: Path, disk: Path) -> None:
    """Check the published checksum, then decompress to a raw (sparse) disk."""
    expected = (image.parent / f"{image.name}.sha256").read_text().split()[0]
    digest = hashlib.sha256()
    with image.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == expected, f"{image}: sha256 differs from {image.name}.sha256"
    subprocess.run(["zstd", "-q", "-d", "-f", str(image), "-o", str(disk)], check=True, timeout=300)


def partitions(disk: Path) -> dict[str, dict[str, object]]:
    """The GPT partitions by name, each with its byte offset and size."""
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True, timeout=30).stdout)["partitiontable"]
    sector = int(table.get("sectorsize", 512))
    return {p.get("name", ""): {"type": p["type"].upper(), "offset": int(p["start"]) * sector,
                                "size": int(p["size"]) * sector} for p in table["partitions"]}


def esp_offset(disk: Path) -> int:
    esp = [p for p in partitions(disk).values() if p["type"] == ESP_TYPE]
    assert len(esp) == 1, f"expected one EFI system partition: {partitions(disk)}"
    return int(str(esp[0]["offset"]))


def provisioning() -> dict[str, object]:
    from argon2 import PasswordHasher

    thermostat = {"kind": "DeviceModel", "name": "thermostat", "properties": [
        {"name": "temperature", "type": "float", "access": "ReadOnly", "unit": "degC"},
        {"name": "setpoint", "type": "float", "access": "ReadWrite", "minimum": 5, "maximum": 90}]}
    meter = {"kind": "DeviceModel", "name": "meter", "properties": [{"name": "energy", "type": "int", "unit": "Wh"}]}
    return {
        "admin": {"name": "admin", "password_hash": PasswordHasher().hash(PASSWORD)},
        "documents": [
            {"kind": "Gateway", "name": "boot-test", "http": {"listen": "0.0.0.0:8080"},
             "eventbus": {"url": "mqtt://127.0.0.1:1883"}},
            thermostat, meter,
            {"kind": "Device", "name": "boiler-1", "model": "thermostat", "protocol": {"name": "virtual"},
             "properties": [
                 {"name": "temperature", "visitor": {"generator": "sine", "amplitude": 8, "period": "60s",
                                                     "offset": 60}},
                 {"name": "setpoint", "desired": 62, "visitor": {"generator": "memory", "initial": 20.0}}]},
            {"kind": "Device", "name": "meter-1", "model": "meter", "protocol": {"name": "virtual"},
             "properties": [{"name": "energy", "collect_interval": "1s",
                             "visitor": {"generator": "counter", "start": 1000, "step": 7}}]},
        ],
    }


class Machine:
    """One qemu guest (software emulation, OVMF) with its web port forwarded to a loopback port."""

    def __init__(self, disk: Path, workdir: Path) -> None:
        self.disk = disk
        self.workdir = workdir
        self.boots = 0
        self.healthy_after = 0.0
        shutil.copy(OVMF_VARS, workdir / "OVMF_VARS.fd")
        self.power_on()

    def power_on(self) -> None:
        self.boots += 1
        self.port = free_port()
        self.serial = self.workdir / f"serial-{self.boots}.log"
        variables = self.workdir / "OVMF_VARS.fd"
        disk = self.disk
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            # No emulated CD drive, VGA or network boot ROM: the firmware goes straight to the disk, as an
            # appliance's firmware does.
            ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-nodefaults", "-m", "1024", "-smp", "2", "-no-reboot",
             "-display", "none", "-monitor", "none", "-serial", f"file:{self.serial}",
             "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
             "-drive", f"if=pflash,format=raw,file={variables}",
             "-drive", f"file={disk},format=raw,if=virtio",
             "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:8080",
             "-device", "virtio-net-pci,netdev=net0,romfile="],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=(self.workdir / f"qemu-{self.boots}.log").open("wb"))
        self.url = f"http://127.0.0.1:{self.port}"

    def console(self) -> str:
        return self.serial.read_text(errors="replace")[-3000:] if self.serial.exists() else ""

    def wait_healthy(self, timeout: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"qemu exited ({self.process.returncode}):\n{self.console()}"
            try:
                response = httpx.get(f"{self.url}/healthz", timeout=5)
                if response.status_code == 200:
                    self.healthy_after = time.monotonic() - self.started
                    answer: dict[str, object] = response.json()
                    return answer
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"no /healthz answer within {timeout:.0f} s; console:\n{self.console()}")

    def boot_report(self, timeout: float) -> str:
        """What fieldgate-boot-report.service wrote to the console: systemd-analyze time, blame, critical chain."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.serial.read_text(errors="replace") if self.serial.exists() else ""
            report = re.search(r"fieldgate boot report:\s*\n(.*?)fieldgate boot report end", text, re.S)
            if report:
                return re.sub(r"\x1b\[[0-9;]*m", "", report[1]).replace("\r", "")
            time.sleep(1)
        raise AssertionError(f"no boot report on the console within {timeout:.0f} s:\n{self.console()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


@pytest.fixture(scope="session")
def booted(appliance_image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Machine]:
    absent = missing(BOOT_TOOLS)
    require(not absent, f"booting the image needs: {', '.join(absent)}; scripts/bootstrap.sh installs them as root")
    require(OVMF_CODE.exists() and OVMF_VARS.exists(), f"booting the image needs {OVMF_CODE} (ovmf)")
    workdir = tmp_path_factory.mktemp("boot")
    disk = workdir / "disk.img"
    unpack(appliance_image, disk)
    provision = workdir / "fieldgate-provision.yaml"
    provision.write_text(yaml.safe_dump(provisioning(), sort_keys=False))
    subprocess.run(["mcopy", "-i", f"{disk}@@{esp_offset(disk)}", str(provision), "::/fieldgate-provision.yaml"],
                   check=True, timeout=30)
    machine = Machine(disk, workdir)
    try:
        health = machine.wait_healthy(BOOT_TIMEOUT)
        print(f"healthy {machine.healthy_after:.1f} s after power-on (first boot, provisioning included)")
        assert health == {"status": "ok", "node": "boot-test"}  # the provisioned Gateway document runs
        yield machine
    finally:
        machine.stop()


def login(machine: Machine, password: str) -> httpx.Client:
    client = httpx.Client(base_url=machine.url, timeout=30)
    form = client.get("/login")
    csrf = re.search(r'name="_csrf" value="([^"]+)"', form.text)
    assert csrf, form.text[:500]
    response = client.post("/login", data={"username": "admin", "password": password, "_csrf": csrf[1],
                                           "next": "/"})
    if response.status_code != 303:
        client.close()
        raise PermissionError(f"login answered {response.status_code}")
    return client


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
    # /var/lib/fieldgate is the data partition (256 MiB), not a directory on the root file system.
    total = re.search(r"^fieldgate_data_dir_disk_total_bytes(?:\{[^}]*\})? (\S+)$", metrics, re.M)
    assert total, metrics[:1000]
    assert 200 << 20 < float(total[1]) < 260 << 20


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
    loader = subprocess.run(["mtype", "-i", esp, "::/loader/loader.conf"], capture_output=True, text=True,
                            check=True, timeout=30).stdout
    assert "default fieldgate-a.conf" in loader and "timeout 0" in loader


def test_the_gateway_answers_within_20_s_of_power_on(booted: Machine) -> None:
    report = booted.boot_report(120)
    print(f"healthy {booted.healthy_after:.1f} s after power-on; the guest's boot report:\n{report}")
    assert "Startup finished" in report and "fieldgate.service" in report
    assert booted.healthy_after <= HEALTHY_WITHIN, \
        f"healthy {booted.healthy_after:.1f} s after power-on, over {HEALTHY_WITHIN:.0f} s:\n{report}"


def test_after_a_power_cut_the_provisioned_gateway_comes_back(booted: Machine) -> None:
    """qemu killed (no shutdown): the read-only root and the data partition's layers bring back the same node."""
    with contextlib.closing(login(booted, PASSWORD)) as client:
        assert client.get("/api/v1/devices").status_code == 200
    booted.process.kill()  # the power goes
    booted.process.wait(timeout=30)
    booted.power_on()
    health = booted.wait_healthy(BOOT_TIMEOUT)
    assert health == {"status": "ok", "node": "boot-test"}  # /etc/fieldgate from the data partition's layer
    report = booted.boot_report(120)
    print(f"healthy {booted.healthy_after:.1f} s after power-on (second boot); the guest's boot report:\n{report}")
    assert booted.healthy_after <= HEALTHY_WITHIN
    with contextlib.closing(login(booted, PASSWORD)) as client:  # the store on the data partition
        devices = client.get("/api/v1/devices")
        assert sorted(d["name"] for d in devices.json()) == ["boiler-1", "meter-1"]
        assert client.get("/api/v1/status").json()["eventbus"]["connected"] is True
