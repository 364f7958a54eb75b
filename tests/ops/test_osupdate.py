"""The appliance's system update logic (gateway/ops/osupdate.py) and its bootloader backend (image/rauc/bootloader)
outside the image: the real backend script on a directory laid out as the EFI system partition, a real HTTP health
endpoint on loopback, and a stand-in for `rauc` (it cannot write partitions here) that calls the backend as RAUC
does: the target slot marked bad before it is written, then made the primary. The image test
(tests/image/test_os_update.py) runs the same with RAUC, systemd-boot and real reboots."""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ops import osupdate
from gateway.ops.upgrade import ROLLED_BACK, SUCCEEDED, UPGRADING, StatusLog
from tests.conftest import REPO

BOOTLOADER = REPO / "image" / "rauc" / "bootloader"

FAKE_RAUC = """#!/bin/sh
# install and info as RAUC does them, for a bundle whose first line is its version
set -eu
case "$1" in
  info) shift; [ "$1" = --output-format=json ] && shift
        head -n 1 "$1" | grep -q '^signed ' || { echo "signature verification failed" >&2; exit 1; }
        printf '{"compatible": "fieldgate-appliance-amd64", "version": "%s"}\\n' "$(head -n 1 "$1" | cut -d' ' -f2)" ;;
  install) shift; [ -f "$1" ] || exit 1
        FIELDGATE_ESP="$ESP" FIELDGATE_CMDLINE="$CMDLINE" "$BOOTLOADER" set-state b bad
        mkdir -p "$ESP/b" && touch "$ESP/b/vmlinuz" "$ESP/b/initrd.img"
        FIELDGATE_ESP="$ESP" FIELDGATE_CMDLINE="$CMDLINE" "$BOOTLOADER" set-primary b
        printf '[slot.rootfs.1]\\nbundle.version=%s\\nstatus=ok\\n' "$(head -n 1 "$1" | cut -d' ' -f2)" > "$STATUS" ;;
  *) exit 2 ;;
esac
"""


class Esp:
    """A directory laid out as the appliance's EFI system partition, slot a installed, and its command line."""

    def __init__(self, root: Path) -> None:
        self.root = root / "esp"
        self.entries = self.root / "loader" / "entries"
        self.entries.mkdir(parents=True)
        (self.root / "a").mkdir()
        for name in ("vmlinuz", "initrd.img"):
            (self.root / "a" / name).write_bytes(b"kernel")
        for slot, key in (("a", "fieldgate-1"), ("b", "fieldgate-2")):
            (self.entries / f"fieldgate-{slot}.conf").write_text(
                f"title fieldgate (slot {slot})\nlinux /{slot}/vmlinuz\ninitrd /{slot}/initrd.img\n"
                f"options root=PARTLABEL=root-{slot} rauc.slot={slot}\nsort-key {key}\n", encoding="utf-8")
        self.cmdline = root / "cmdline"
        self.boot("a")

    def boot(self, slot: str) -> None:
        """What systemd-boot does: the first entry by sort-key with tries left boots, its counter counted down."""
        chosen = self.backend("get-primary").strip()
        assert chosen == slot, f"systemd-boot would boot slot {chosen}, not {slot}"
        for entry in self.entries.glob(f"fieldgate-{slot}+*.conf"):
            left, _, done = entry.stem.split("+", 1)[1].partition("-")
            entry.rename(self.entries / f"fieldgate-{slot}+{int(left) - 1}-{int(done or 0) + 1}.conf")
        self.cmdline.write_text(f"root=PARTLABEL=root-{slot} ro rauc.slot={slot} quiet\n", encoding="utf-8")

    def backend(self, *args: str) -> str:
        done = subprocess.run([str(BOOTLOADER), *args], capture_output=True, text=True, timeout=30, check=True,
                              env={"PATH": "/usr/bin:/bin", "FIELDGATE_ESP": str(self.root),
                                   "FIELDGATE_CMDLINE": str(self.cmdline)})
        return done.stdout

    def names(self) -> list[str]:
        return sorted(path.name for path in self.entries.glob("*.conf"))


class Health:
    """/healthz on a loopback port, answering 200 while `up`."""

    def __init__(self) -> None:
        self.up = True
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if health.up and self.path == "/healthz" else 503)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def health() -> Iterator[Health]:
    served = Health()
    yield served
    served.server.shutdown()
    served.server.server_close()


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[osupdate.Machine, Esp]:
    esp = Esp(tmp_path)
    rauc = tmp_path / "rauc"
    rauc.write_text(FAKE_RAUC, encoding="utf-8")
    rauc.chmod(0o755)
    status = tmp_path / "rauc.status"
    for name, value in (("ESP", esp.root), ("CMDLINE", esp.cmdline), ("BOOTLOADER", BOOTLOADER),
                        ("STATUS", status)):
        monkeypatch.setenv(name, str(value))
    version_file = tmp_path / "system-version"
    version_file.write_text("1.0\n", encoding="utf-8")
    config = tmp_path / "system.conf"
    config.write_text("[system]\ncompatible=fieldgate-appliance-amd64\nbootloader=custom\n", encoding="utf-8")
    data = tmp_path / "data"
    data.mkdir()
    return osupdate.Machine(data_dir=data, esp=esp.root, cmdline=esp.cmdline, bootloader=BOOTLOADER, rauc=str(rauc),
                            rauc_status=status, version_file=version_file, rauc_config=config,
                            reboot=f"touch {tmp_path / 'rebooted'}"), esp


def request(machine: osupdate.Machine, version: str, *, signed: bool = True, deadline: float = 2.0) -> Path:
    task_dir = machine.data_dir / "upgrade" / "task-t1"
    task_dir.mkdir(parents=True)
    bundle = task_dir / f"fieldgate-os-{version}-amd64.raucb"
    bundle.write_text(f"{'signed' if signed else 'unsigned'} {version}\n", encoding="utf-8")
    osupdate.request_update(machine.data_dir, task="t1", version=version, bundle=bundle, deadline=deadline)
    return bundle


def rebooted(machine: osupdate.Machine) -> bool:
    marker = machine.data_dir.parent / "rebooted"
    found = marker.exists()
    marker.unlink(missing_ok=True)
    return found


def pending(machine: osupdate.Machine) -> dict[str, object] | None:
    return osupdate._read_json(machine.directory / osupdate.PENDING)


def test_the_backend_counts_a_new_slot_and_systemd_boot_falls_back(machine: tuple[osupdate.Machine, Esp]) -> None:
    _, esp = machine
    assert esp.backend("get-primary") == "a\n"
    assert esp.backend("get-state", "b") == "bad\n"  # no kernel in slot b yet
    esp.backend("set-state", "b", "bad")
    (esp.root / "b").mkdir()
    for name in ("vmlinuz", "initrd.img"):
        (esp.root / "b" / name).write_bytes(b"kernel")
    esp.backend("set-primary", "b")
    assert esp.names() == ["fieldgate-a.conf", "fieldgate-b+1.conf"]  # one try
    assert "sort-key fieldgate-1" in (esp.entries / "fieldgate-b+1.conf").read_text(encoding="utf-8")
    assert esp.backend("get-primary") == "b\n"
    esp.boot("b")  # the try is used
    assert esp.names() == ["fieldgate-a.conf", "fieldgate-b+0-1.conf"]
    # not blessed: the next boot is slot a's, whatever the sort keys say
    esp.boot("a")
    assert esp.backend("get-state", "b") == "bad\n"
    # made primary while slot a runs, and good: no counter
    esp.backend("set-primary", "a")
    assert esp.backend("get-primary") == "a\n"
    assert esp.names() == ["fieldgate-a.conf", "fieldgate-b+0-1.conf"]
    with pytest.raises(subprocess.CalledProcessError) as refused:
        esp.backend("set-state", "c", "good")
    assert "unknown slot 'c'" in refused.value.stderr


def test_a_good_update_is_installed_boots_once_on_trial_and_stays(machine: tuple[osupdate.Machine, Esp],
                                                                  health: Health) -> None:
    node, esp = machine
    bundle = request(node, "2.0")
    assert osupdate.apply(node) == 0
    assert rebooted(node)
    assert not bundle.exists() and not (node.directory / osupdate.REQUEST).exists()
    assert pending(node) is not None and pending(node)["phase"] == osupdate.REBOOTING  # type: ignore[index]
    latest = StatusLog(node.data_dir).latest()
    assert latest is not None and latest["status"] == UPGRADING and "rebooting into it" in latest["reason"]
    assert latest["wheels"] == str(bundle.parent)
    esp.boot("b")
    assert node.trial("b")
    assert osupdate.boot_check(node, health.url) == 0
    assert not rebooted(node)
    assert esp.names() == ["fieldgate-a.conf", "fieldgate-b.conf"]  # kept: no counter left
    latest = StatusLog(node.data_dir).latest()
    assert latest is not None and latest["status"] == SUCCEEDED, latest
    assert latest["reason"] == "system 2.0 runs from slot b"
    assert osupdate.system_state(node.data_dir) == {
        "slot": "b", "version": "2.0", "compatible": "fieldgate-appliance-amd64",
        "booted_at": osupdate.system_state(node.data_dir)["booted_at"]}  # type: ignore[index]
    assert pending(node) is None
    esp.boot("b")  # and the next boot is slot b's again, not a trial
    assert not node.trial("b")
    assert osupdate.boot_check(node, health.url) == 0
    assert StatusLog(node.data_dir).latest() == latest  # nothing new to settle


def test_a_new_slot_whose_gateway_is_not_healthy_boots_the_old_one_again(machine: tuple[osupdate.Machine, Esp],
                                                                         health: Health) -> None:
    node, esp = machine
    request(node, "2.1", deadline=1.5)
    assert osupdate.apply(node) == 0 and rebooted(node)
    esp.boot("b")
    health.up = False
    assert osupdate.boot_check(node, health.url, default_deadline=600) == 1  # the task's deadline, not 600 s
    assert rebooted(node)
    assert esp.names() == ["fieldgate-a.conf", "fieldgate-b+0-1.conf"]
    health.up = True
    esp.boot("a")  # by itself: slot b has no tries left
    assert osupdate.boot_check(node, health.url) == 0
    latest = StatusLog(node.data_dir).latest()
    assert latest is not None and latest["status"] == ROLLED_BACK, latest
    assert latest["reason"] == ("the new system 2.1 in slot b did not come up healthy: the gateway did not answer "
                                "healthy within 1.5 s of the boot; slot a (1.0) booted again by itself")
    assert osupdate.system_state(node.data_dir)["slot"] == "a"  # type: ignore[index]
    assert pending(node) is None


@pytest.mark.parametrize("hostile", ["600", float("nan"), float("inf"), -5, 0, 1e12, True, None, [30]])
def test_a_hostile_deadline_in_the_pending_update_falls_back_to_the_default(
        machine: tuple[osupdate.Machine, Esp], health: Health, hostile: object) -> None:
    """The request is written by the unprivileged gateway and read by root at boot: a deadline that is not a number
    from 1 s to an hour neither makes the health gate raise nor wait for ever."""
    node, esp = machine
    request(node, "2.3")
    assert osupdate.apply(node) == 0 and rebooted(node)
    written = pending(node)
    assert written is not None
    osupdate._write_json(node.directory / osupdate.PENDING, {**written, "deadline": hostile})
    esp.boot("b")
    health.up = False
    began = time.monotonic()
    assert osupdate.boot_check(node, health.url, default_deadline=1.2) == 1
    assert time.monotonic() - began < 30
    assert rebooted(node)
    failure = pending(node)
    assert failure is not None and failure["failure"] == "the gateway did not answer healthy within 1.2 s of the boot"


def test_an_update_cut_off_while_writing_leaves_the_old_slot(machine: tuple[osupdate.Machine, Esp],
                                                             health: Health) -> None:
    node, esp = machine
    request(node, "2.2")
    # the power went while RAUC wrote slot b: the pending record says so, slot b is marked bad
    osupdate._write_json(node.directory / osupdate.PENDING, {
        "task": "t1", "version": "2.2", "task_dir": str(node.data_dir / "upgrade" / "task-t1"), "from_slot": "a",
        "to_slot": "b", "phase": osupdate.INSTALLING})
    (node.directory / osupdate.REQUEST).unlink()
    esp.backend("set-state", "b", "bad")
    esp.boot("a")
    assert osupdate.boot_check(node, health.url) == 0
    latest = StatusLog(node.data_dir).latest()
    assert latest is not None and latest["status"] == ROLLED_BACK
    assert "cut off while slot b was being written" in latest["reason"]
    assert "slot a (1.0) was not changed" in latest["reason"]


@pytest.mark.parametrize(("signed", "asked", "message"), [
    (False, "3.0", "the bundle is refused: signature verification failed"),
    (True, "3.1", "the bundle holds system version 3.0, the task asked for 3.1"),
])
def test_a_bundle_refused_changes_nothing(machine: tuple[osupdate.Machine, Esp], signed: bool, asked: str,
                                          message: str) -> None:
    node, esp = machine
    bundle = request(node, "3.0", signed=signed)
    if asked != "3.0":
        record = json.loads((node.directory / osupdate.REQUEST).read_text(encoding="utf-8"))
        (node.directory / osupdate.REQUEST).write_text(json.dumps({**record, "version": asked}), encoding="utf-8")
    assert osupdate.apply(node) == 1
    assert not rebooted(node) and not bundle.exists() and pending(node) is None
    latest = StatusLog(node.data_dir).latest()
    assert latest is not None and latest["status"] == ROLLED_BACK and latest["reason"] == message
    assert esp.names() == ["fieldgate-a.conf", "fieldgate-b.conf"]


def test_a_bundle_outside_the_data_dir_is_refused(machine: tuple[osupdate.Machine, Esp], tmp_path: Path) -> None:
    node, _ = machine
    outside = tmp_path / "elsewhere.raucb"
    outside.write_text("signed 4.0\n", encoding="utf-8")
    osupdate.request_update(node.data_dir, task="t2", version="4.0", bundle=outside, deadline=5)
    assert osupdate.apply(node) == 1
    latest = StatusLog(node.data_dir).latest()
    assert latest is not None and "is not a .raucb file in" in latest["reason"]


def test_a_system_not_booted_from_a_slot_has_nothing_to_check(machine: tuple[osupdate.Machine, Esp],
                                                              health: Health) -> None:
    node, esp = machine
    esp.cmdline.write_text("root=/dev/sda1 ro\n", encoding="utf-8")
    assert osupdate.boot_check(node, health.url) == 0
    assert osupdate.system_state(node.data_dir) is None
