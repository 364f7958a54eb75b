"""The appliance image as the boot test and the boot benchmark use it: built by image/build.sh (or given as
FIELDGATE_IMAGE=<file>.img.zst), unpacked, provisioned, booted in qemu with OVMF and no KVM, timed from power-on to
the first /healthz answer, with the guest's own boot report read from its console."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.testing import free_port
from tests.conftest import REPO

BUILD_TOOLS = {"debootstrap": "debootstrap", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools",
               "sfdisk": "fdisk", "zstd": "zstd", "mkfs.ext4": "e2fsprogs", "mksquashfs": "squashfs-tools",
               "rauc": "rauc", "openssl": "openssl"}
BOOT_TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "mcopy": "mtools", "sfdisk": "fdisk", "zstd": "zstd"}
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
PASSWORD = "field-gate-boot-test"
BOOT_TIMEOUT = 360.0
# Issue 20's goal: the gateway answering its health check within 20 s of power-on in qemu without KVM. Not reached
# yet (about 27 s after a power cut and 40 s at the first boot on an idle 2-core box); asserted only by the
# benchmark tests/benchmarks/test_image_boot.py, printed beside every measured boot.
HEALTHY_GOAL = 20.0


def missing(tools: dict[str, str]) -> list[str]:
    return [f"{tool} ({package})" for tool, package in tools.items() if shutil.which(tool) is None]


def require(condition: bool, reason: str) -> None:
    if not condition:
        pytest.skip(reason)


def appliance_image(out: Path) -> Path:
    """The compressed image: FIELDGATE_IMAGE, or one built now into `out` (the Debian root reused from
    build/image-cache while its package list is unchanged)."""
    given = os.environ.get("FIELDGATE_IMAGE")
    if given:
        assert Path(given).is_file(), f"FIELDGATE_IMAGE={given}: no such file"
        return Path(given)
    require(os.geteuid() == 0, "image build needs root (debootstrap, chroot, file ownership in the image)")
    absent = missing(BUILD_TOOLS)
    require(not absent, f"image build needs: {', '.join(absent)}; scripts/bootstrap.sh installs them as root")
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


def os_bundle(image: Path) -> Path:
    """The system bundle built beside `image` (fieldgate-os-<version>-amd64.raucb)."""
    bundles = sorted(image.parent.glob("fieldgate-os-*-amd64.raucb"))
    assert len(bundles) == 1, f"expected one system bundle beside {image}: {bundles}"
    return bundles[0]


def signing_dir() -> Path:
    """Where the build's bundle signing key is: FIELDGATE_IMAGE_KEYS, else build/image-keys (build.sh's default)."""
    return Path(os.environ.get("FIELDGATE_IMAGE_KEYS") or REPO / "build" / "image-keys")


def rebundle(bundle: Path, workdir: Path, version: str, *, break_gateway: bool = False) -> Path:
    """A bundle of the same system as `bundle` under another version, signed with the build's key; with
    `break_gateway`, its gateway service fails at every start (as a broken build would)."""
    keys = signing_dir()
    content = workdir / f"bundle-{version}"
    shutil.rmtree(content, ignore_errors=True)
    # a plain bundle is a squashfs with its signature after it
    subprocess.run(["unsquashfs", "-q", "-n", "-d", str(content), str(bundle)], check=True, timeout=300,
                   capture_output=True)
    manifest = content / "manifest.raucm"
    manifest.write_text(re.sub(r"(?m)^version=.*$", f"version={version}", manifest.read_text()))
    if break_gateway:
        root = workdir / f"root-{version}"
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run(["unsquashfs", "-q", "-n", "-d", str(root), str(content / "root.squashfs")], check=True,
                       timeout=600, capture_output=True)
        unit = root / "etc" / "systemd" / "system" / "fieldgate.service"
        unit.write_text(re.sub(r"(?m)^ExecStart=.*$", "ExecStart=/bin/false", unit.read_text()))
        (content / "root.squashfs").unlink()
        subprocess.run(["mksquashfs", str(root), str(content / "root.squashfs"), "-comp", "zstd",
                        "-Xcompression-level", "3", "-b", "1M", "-noappend", "-no-progress", "-quiet"],
                       check=True, timeout=600, capture_output=True)
        shutil.rmtree(root)
    signed = workdir / f"fieldgate-os-{version}-amd64.raucb"
    signed.unlink(missing_ok=True)
    subprocess.run(["rauc", "bundle", "--cert", str(keys / "signing.cert.pem"), "--key", str(keys / "signing.key.pem"),
                    "--keyring", str(keys / "ca.cert.pem"), str(content), str(signed)], check=True, timeout=600,
                   capture_output=True)
    shutil.rmtree(content)
    return signed


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
             "properties": [{"name": "energy", "collect_interval": "200ms",
                             "visitor": {"generator": "counter", "start": 1000, "step": 7}}]},
            # Every report also goes to a target that is never there, so its outbox only grows: what the power-cut
            # test counts on the disk.
            {"kind": "Endpoint", "name": "bus", "type": "bus"},
            {"kind": "Endpoint", "name": "held", "type": "http", "properties": {"url": "http://127.0.0.1:9/held"}},
            {"kind": "Route", "name": "held", "source": "bus", "source_resource": {"topic": "devices/+/+/telemetry"},
             "target": "held"},
        ],
    }


class Machine:
    """One qemu guest (software emulation, OVMF) with its web port forwarded to a loopback port."""

    def __init__(self, disk: Path, workdir: Path, *, reboots: bool = False) -> None:
        self.disk = disk
        self.workdir = workdir
        self.reboots = reboots  # a reboot of the guest boots it again (else qemu exits)
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
            ["qemu-system-x86_64", "-machine", "q35,accel=tcg", "-nodefaults", "-m", "1024", "-smp", "2",
             *([] if self.reboots else ["-no-reboot"]),
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

    def healthy_line(self, what: str) -> str:
        """The measured figure beside the goal, e.g. "healthy 27.0 s after power-on (goal 20 s)"."""
        return f"healthy {self.healthy_after:.1f} s after power-on (goal {HEALTHY_GOAL:.0f} s), {what}"

    def power_cut(self) -> None:
        """qemu killed, no shutdown: the power goes."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


def provisioned_machine(image: Path, workdir: Path, provision: dict[str, object] | None = None, *,
                        data_files: dict[str, bytes] | None = None, reboots: bool = False) -> Machine:
    """The image unpacked to a disk in `workdir`, the test's provisioning file (or `provision`) on its boot
    partition, `data_files` (path on the data partition → content) written, powered on (not yet waited for)."""
    absent = missing(BOOT_TOOLS)
    require(not absent, f"booting the image needs: {', '.join(absent)}; scripts/bootstrap.sh installs them as root")
    require(OVMF_CODE.exists() and OVMF_VARS.exists(), f"booting the image needs {OVMF_CODE} (ovmf)")
    disk = workdir / "disk.img"
    unpack(image, disk)
    provision_file = workdir / "fieldgate-provision.yaml"
    provision_file.write_text(yaml.safe_dump(provision or provisioning(), sort_keys=False))
    subprocess.run(["mcopy", "-i", f"{disk}@@{esp_offset(disk)}", str(provision_file), "::/fieldgate-provision.yaml"],
                   check=True, timeout=30)
    if data_files:
        write_data_files(disk, workdir, data_files)
    return Machine(disk, workdir, reboots=reboots)


def write_data_files(disk: Path, workdir: Path, files: dict[str, bytes]) -> None:
    """Files written onto the data partition of a powered-off disk (debugfs), owned by root, mode 0644, their
    missing directories made (e.g. overlay/etc/upper/hosts is /etc/hosts for the guest)."""
    data = partitions(disk)["data"]
    offset, size = int(str(data["offset"])), int(str(data["size"]))
    copy = workdir / "data-partition.img"
    subprocess.run(["dd", f"if={disk}", f"of={copy}", "bs=1M", f"skip={offset}", f"count={size}",
                    "iflag=skip_bytes,count_bytes", "status=none"], check=True, timeout=120)
    commands = []
    for index, (path, content) in enumerate(files.items()):
        source = workdir / f"data-file-{index}"
        source.write_bytes(content)
        source.chmod(0o644)
        parents = Path(path).parents
        commands += [f"mkdir {parent}" for parent in reversed(parents) if str(parent) != "."]
        commands += [f"rm {path}", f"write {source} {path}", f"sif {path} uid 0", f"sif {path} gid 0"]
    script = workdir / "debugfs.cmds"
    script.write_text("\n".join(commands) + "\n")
    subprocess.run(["debugfs", "-w", "-f", str(script), str(copy)], capture_output=True, timeout=120, check=True)
    subprocess.run(["dd", f"if={copy}", f"of={disk}", "bs=1M", f"seek={offset}", "oflag=seek_bytes",
                    "conv=notrunc", "status=none"], check=True, timeout=120)
    copy.unlink()


HELD_OUTBOX = "route:default/held"


def store_on_disk(disk: Path, workdir: Path) -> tuple[str, dict[str, int]]:
    """The gateway's store as the data partition of a powered-off disk holds it: its `PRAGMA integrity_check` and
    its outbox rows per outbox. The partition is copied and its journal replayed (e2fsck, as the next boot's
    initramfs does), then the store's file and write-ahead log are read out of it (debugfs) and opened here."""
    import sqlite3

    data = partitions(disk)["data"]
    copy = workdir / "data-partition.img"
    with disk.open("rb") as source, copy.open("wb") as target:
        source.seek(int(str(data["offset"])))
        left = int(str(data["size"]))
        while left:
            chunk = source.read(min(left, 4 << 20))
            assert chunk, f"{disk}: ends inside its data partition"
            target.write(chunk)
            left -= len(chunk)
    fsck = subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True, text=True, timeout=120, check=False)
    assert fsck.returncode < 4, f"e2fsck of the data partition exited {fsck.returncode}:\n{fsck.stdout}{fsck.stderr}"
    store = workdir / "store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir()
    for name in ("fieldgate.db", "fieldgate.db-wal"):
        subprocess.run(["debugfs", "-R", f"dump /fieldgate/{name} {store / name}", str(copy)], capture_output=True,
                       timeout=60, check=False)
    copy.unlink()
    assert (store / "fieldgate.db").is_file(), "no /fieldgate/fieldgate.db on the data partition"
    connection = sqlite3.connect(store / "fieldgate.db")
    try:
        integrity = "; ".join(str(row[0]) for row in connection.execute("PRAGMA integrity_check"))
        rows = {str(sink): int(count) for sink, count in
                connection.execute("SELECT sink, count(*) FROM outbox GROUP BY sink")}
    finally:
        connection.close()
    return integrity, rows


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
