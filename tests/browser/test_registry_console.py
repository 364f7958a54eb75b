"""The registry console in Chromium against a real registry and two real gateways: the first admin made with the
command `registry serve` prints, a join token made on the Join page and a node joined with the command the page
prints, a group by selector that shows both nodes as the selector is typed, and a desired value set on a device the
node reports: applied, then a refused one with the node's reason."""

from __future__ import annotations

import re
import shlex
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Locator, Page, expect

from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import Registry, join, stop, wait_for_port

PASSWORD = "console-admin-pw"
NODE_CONFIG = """\
kind: Gateway
name: {name}
http: {{listen: "127.0.0.1:{port}"}}
eventbus: {{url: none}}
store: {{flush_interval: 100ms}}
---
kind: DeviceModel
name: thermostat
properties:
  - {{name: temperature, type: float, access: ReadOnly, unit: degC}}
  - {{name: setpoint, type: float, access: ReadWrite, unit: degC, minimum: 5, maximum: 90}}
---
kind: Device
name: boiler-1
model: thermostat
protocol: {{name: virtual}}
properties:
  - {{name: temperature, collect_interval: 500ms, visitor: {{generator: constant, value: 61.5}}}}
  - {{name: setpoint, collect_interval: 500ms, visitor: {{generator: memory, initial: 20.0}}}}
"""


class Node:
    """A `fieldgate run` process on a data dir that joined the registry."""

    def __init__(self, tmp_path: Path, name: str) -> None:
        self.name, self.data_dir, self.port = name, tmp_path / name, free_port()
        self.config = tmp_path / f"{name}.yaml"
        self.config.write_text(textwrap.dedent(NODE_CONFIG.format(name=name, port=self.port)))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen([*FIELDGATE, "run", "-c", str(self.config), "--data-dir", str(self.data_dir)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)


def reload_until(page: Page, shown: Callable[[], Locator], timeout: float = 30.0) -> None:
    """Reload until the locator is visible (the pages are not live yet: a reload shows the latest state)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            expect(shown()).to_be_visible(timeout=1_500)
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            page.reload()


def nav(page: Page, name: str) -> None:
    page.get_by_role("navigation").get_by_role("link", name=name, exact=True).click()


def run_join_command(shown: str, node: Node) -> str:
    """The join line the page printed, run for this node (its own data dir, the test's interpreter)."""
    line = shown.strip().splitlines()[0]
    argv = shlex.split(line)
    assert argv[:2] == ["fieldgate", "join"], line
    argv[argv.index("--data-dir") + 1] = str(node.data_dir)
    argv[argv.index("--name") + 1] = node.name
    joined = subprocess.run([*FIELDGATE, *argv[1:]], capture_output=True, text=True, timeout=60)
    assert joined.returncode == 0, joined.stderr
    return joined.stdout


def test_join_group_and_set_desired_values_from_the_console(registry: Registry, console: Page, tmp_path: Path,
                                                           artifacts: Path) -> None:
    page = console
    added = subprocess.run([*FIELDGATE, "registry", "user", "add", "admin", "--role", "admin", "--scope", "platform",
                            "--password-stdin", "--data-dir", str(registry.data_dir)], input=PASSWORD + "\n",
                           capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    page.goto(registry.url + "/")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

    # a join token on the Join page, and the command it prints run on the node
    page.get_by_role("link", name="Join a node").first.click()
    expect(page.locator("#ca-fingerprint")).to_have_text(re.compile(r"^([0-9A-F]{2}:){31}[0-9A-F]{2}$"))
    page.get_by_label("Max uses").fill("2")
    page.get_by_label("Labels").fill("site=north")
    page.get_by_label("Node name").fill("gw-1")
    page.get_by_role("button", name="Create join token").click()
    command = page.locator("#join-command").inner_text()
    assert f"fieldgate join --registry {registry.url} --token " in command and "--name gw-1" in command
    page.screenshot(path=str(artifacts / "registry-console-join.png"), full_page=True)
    nodes = [Node(tmp_path, "gw-1"), Node(tmp_path, "gw-2")]
    assert "as node gw-1" in run_join_command(command, nodes[0])
    assert "as node gw-2" in run_join_command(command, nodes[1])  # the token takes two nodes
    refused = join(registry, command.split("--token ")[1].split()[0], tmp_path / "gw-3", "--name", "gw-3")
    assert refused.returncode == 2 and "used up" in refused.stderr
    try:
        for node in nodes:
            node.start()
        nav(page, "Nodes")
        for node in nodes:
            reload_until(page, lambda n=node: page.locator(f'tr[data-node="{n.name}"] [data-status="healthy"]'))
        page.screenshot(path=str(artifacts / "registry-console-nodes.png"), full_page=True)
        page.get_by_role("link", name="gw-1", exact=True).click()
        expect(page.locator("#node-addresses")).to_contain_text("(seen by the registry)")
        expect(page.locator("#node-devices")).to_contain_text("default/boiler-1")
        expect(page.locator("#node-plots figure canvas")).to_have_count(4)  # uPlot drew over the four SVG plots
        expect(page.locator("#node-plots .windows a")).to_have_count(4)  # 15m, 1h, 6h, 24h
        spans = page.eval_on_selector_all("#node-plots figure", "figures => figures.map(f => f.fieldgatePlot"
                                          " ? f.fieldgatePlot.scales.x.max - f.fieldgatePlot.scales.x.min : null)")
        assert spans and all(span is not None and 0 < span <= 24 * 3600 for span in spans), spans  # not years
        page.get_by_role("link", name="Fetch the node's log").click()
        expect(page.locator("#node-log")).to_contain_text("started: node gw-1")
        page.screenshot(path=str(artifacts / "registry-console-node.png"), full_page=True)

        # a group by selector: the preview lists both nodes as the selector is typed, before anything is saved
        nav(page, "Groups")
        page.get_by_role("link", name="New group").click()
        page.get_by_label("Name", exact=True).fill("north")
        page.get_by_label("Label selector").press_sequentially("site=north", delay=20)
        for node in nodes:
            expect(page.locator(f'#preview-nodes tr[data-node="{node.name}"]')).to_be_visible()
        expect(page.locator("#preview-count")).to_have_text("2")
        page.screenshot(path=str(artifacts / "registry-console-group-preview.png"), full_page=True)
        page.get_by_role("button", name="Create group").click()
        expect(page.get_by_role("status")).to_contain_text("Group north created: gw-1, gw-2")
        nav(page, "Groups")
        expect(page.locator('tr[data-group="north"]')).to_contain_text("gw-1, gw-2")

        # a device a node reports (in its own configuration): its latest values with units, then desired values
        nav(page, "Devices")
        row = page.locator('tr[data-device="default/boiler-1"][data-node="gw-1"]')
        reload_until(page, lambda: row.get_by_text("61.5"))
        expect(row).to_contain_text("61.5 \u00b0C")
        expect(row).to_contain_text("thermostat")
        expect(page.locator('tr[data-device="default/boiler-1"]')).to_have_count(2)  # one on each node
        page.screenshot(path=str(artifacts / "registry-console-devices.png"), full_page=True)
        row.get_by_role("link", name="default/boiler-1").click()
        setpoint = page.locator('tr[data-prop="setpoint"]')
        setpoint.get_by_label("desired setpoint").fill("42.5")
        setpoint.get_by_role("button", name="Set").click()
        expect(page.get_by_role("status")).to_contain_text("Desired setpoint=42.5 set for default/boiler-1 on gw-1")
        reload_until(page, lambda: page.locator('tr[data-prop="setpoint"] td.delivery [data-status="applied"]'))
        expect(page.locator('tr[data-prop="setpoint"] td.reported')).to_have_text("42.5 \u00b0C")
        page.screenshot(path=str(artifacts / "registry-console-desired-applied.png"), full_page=True)

        page.locator('tr[data-prop="setpoint"]').get_by_label("desired setpoint").fill("500")
        page.locator('tr[data-prop="setpoint"]').get_by_role("button", name="Set").click()
        reload_until(page, lambda: page.locator('tr[data-prop="setpoint"] td.delivery [data-status="refused"]'))
        expect(page.locator('tr[data-prop="setpoint"] [data-refusal]')).to_contain_text("above the maximum 90")
        expect(page.locator('tr[data-prop="setpoint"] td.reported')).to_have_text("42.5 \u00b0C")
        page.screenshot(path=str(artifacts / "registry-console-desired-refused.png"), full_page=True)

        nav(page, "Overview")
        expect(page.locator('tr[data-alert="desired value refused"]')).to_contain_text("above the maximum 90")
        expect(page.locator("#nodes-healthy")).to_have_text("2")
        page.screenshot(path=str(artifacts / "registry-console-overview.png"), full_page=True)
    finally:
        for node in nodes:
            node.stop()
