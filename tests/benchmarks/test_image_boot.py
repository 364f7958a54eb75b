"""Boot to healthy (issue 20, point 3): the appliance image's gateway answering its health check within 20 s of
power-on in qemu without KVM, at the first boot (provisioning included) and after a power cut.

Run as root: .venv/bin/python -m pytest -m "benchmark and image" tests/benchmarks/test_image_boot.py -s
(FIELDGATE_IMAGE=<file>.img.zst boots an image built before; otherwise one is built as tests/image does). Marked
`image` as well, it runs only when the marker expression names `image` (tests/benchmarks/conftest.py), and
scripts/test.sh leaves it out.

Printed, one JSON line: seconds from power-on to the first /healthz answer for each boot, then each boot's report
from the guest (systemd-analyze time, blame and the gateway's critical chain). Asserted: both boots within
HEALTHY_GOAL (20 s). Not met yet: on an idle 2-core box the image answers in about 40 s at the first boot and 27 s
after a power cut (57 s and 48 s at load
average 4-5; tests/image/test_boot.py asserts the bounds a loaded CI box meets, 120 s and 90 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.image.appliance import BOOT_TIMEOUT, HEALTHY_GOAL, appliance_image, provisioned_machine

pytestmark = [pytest.mark.benchmark, pytest.mark.image, pytest.mark.slow, pytest.mark.timeout(1500)]


def test_the_gateway_answers_within_20_s_of_power_on(tmp_path: Path) -> None:
    image = appliance_image(tmp_path)
    machine = provisioned_machine(image, tmp_path)
    try:
        health = machine.wait_healthy(BOOT_TIMEOUT)
        assert health == {"status": "ok", "node": "boot-test"}
        first, first_report = machine.healthy_after, machine.boot_report(120)
        print(f"{machine.healthy_line('first boot, provisioning included')}; the guest's boot report:\n"
              f"{first_report}")
        machine.power_cut()
        machine.power_on()
        assert machine.wait_healthy(BOOT_TIMEOUT) == {"status": "ok", "node": "boot-test"}
        again, again_report = machine.healthy_after, machine.boot_report(120)
        print(f"{machine.healthy_line('after a power cut')}; the guest's boot report:\n{again_report}")
    finally:
        machine.stop()
    print(json.dumps({"image": image.name, "goal_s": HEALTHY_GOAL, "first_boot_s": round(first, 1),
                      "after_power_cut_s": round(again, 1)}))
    assert again <= HEALTHY_GOAL, f"healthy {again:.1f} s after a power cut, over {HEALTHY_GOAL:.0f} s"
    assert first <= HEALTHY_GOAL, f"healthy {first:.1f} s at the first boot, over {HEALTHY_GOAL:.0f} s"
