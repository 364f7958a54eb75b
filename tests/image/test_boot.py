"""The appliance image: built by image/build.sh, provisioned, booted in qemu with OVMF, used over the network.

Needs root and the tools below (scripts/bootstrap.sh installs them as root); otherwise the tests are skipped and
the reason names what is missing. FIELDGATE_IMAGE=<file>.img.zst boots an image built before instead of building
one; the image is built once per test run and shared by the tests here.
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


def esp_offset(disk: Path) -> int:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk)], capture_output=True, text=True,
                                      check=True, timeout=30).stdout)["partitiontable"]
    esp = [p for p in table["partitions"] if p["type"].upper() == ESP_TYPE]
    assert len(esp) == 1, f"expected one EFI system partition: {table['partitions']}"
    return int(esp[0]["start"]) * int(table.get("sectorsize", 512))


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
        self.port = free_port()
        self.serial = workdir / "serial.log"
        variables = workdir / "OVMF_VARS.fd"
        shutil.copy(OVMF_VARS, variables)
        self.process = subprocess.Popen(
            ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-m", "1024", "-smp", "2", "-no-reboot",
             "-display", "none", "-monitor", "none", "-serial", f"file:{self.serial}",
             "-drive", f"if=pflash,format=raw,readonly=on,file={OVMF_CODE}",
             "-drive", f"if=pflash,format=raw,file={variables}",
             "-drive", f"file={disk},format=raw,if=virtio",
             "-netdev", f"user,id=net0,hostfwd=tcp:127.0.0.1:{self.port}-:8080",
             "-device", "virtio-net-pci,netdev=net0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=(workdir / "qemu.log").open("wb"))
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
                    answer: dict[str, object] = response.json()
                    return answer
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise AssertionError(f"no /healthz answer within {timeout:.0f} s; console:\n{self.console()}")

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
    started = time.monotonic()
    machine = Machine(disk, workdir)
    try:
        health = machine.wait_healthy(BOOT_TIMEOUT)
        print(f"healthy {time.monotonic() - started:.0f} s after power-on")
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
