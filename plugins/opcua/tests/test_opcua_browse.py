"""`fieldgate browse opcua URL` on a node-opcua server writes a DeviceModel and a Device that `fieldgate check`
accepts and the gateway runs; a server that is not there is one line on stderr."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from opcua_helpers import OpcuaServer

from gateway.runtime import Gateway
from gateway.testing import free_port, wait_until


def fieldgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=120)


async def test_browse_writes_documents_that_check_and_run(line_server: OpcuaServer, tmp_path: Path,
                                                         start_gateway: Callable[..., Any]) -> None:
    out = tmp_path / "line.yaml"
    done = fieldgate("browse", "opcua", line_server.url, "--path-pattern", "Line1/*", "--interval", "200ms",
                     "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert "9 variables written" in done.stderr and "not matching a pattern" in done.stderr, done.stderr
    model, device = yaml.safe_load_all(out.read_text())
    assert (model["kind"], model["name"], device["kind"], device["model"]) == (
        "DeviceModel", "test-line", "Device", "test-line")
    types = {p["name"]: (p["type"], p["access"]) for p in model["properties"]}
    assert types["Line1.Temp"] == ("double", "ReadOnly")
    assert types["Line1.Setpoint"] == ("double", "ReadWrite")
    assert types["Line1.Speed"] == ("int", "ReadWrite")
    assert types["Line1.Running"] == ("boolean", "ReadWrite")
    assert types["Line1.Label"] == ("string", "ReadWrite")
    assert "Line1.Motor.Current" not in types  # one level below Line1 only
    visitors = {p["name"]: p["visitor"] for p in device["properties"]}
    assert visitors["Line1.Count"] == {"node_id": "ns=1;i=1001", "data_type": "Int32"}
    assert visitors["Line1.Label"]["node_id"].lower() == "ns=1;g=72962b91-fa75-4ae6-8d28-b404dc7daf63"
    assert device["protocol"] == {"name": "opcua", "config": {"endpoint": line_server.url}}

    checked = fieldgate("check", str(out))
    assert checked.returncode == 0, checked.stderr

    gw: Gateway = await start_gateway(out)
    props = gw.api.twin("default/test-line").properties
    await wait_until(lambda: props["Line1.Temp"].quality == "good" and props["Line1.Count"].reported == 7,
                     timeout=20)

    deep = tmp_path / "deep.yaml"
    done = fieldgate("browse", "opcua", line_server.url, "--path-pattern", "Line1/**", "--visitor", "browse_path",
                     "--mode", "poll", "--name", "line-one", "-o", str(deep))
    assert done.returncode == 0, done.stderr
    _, device = yaml.safe_load_all(deep.read_text())
    visitors = {p["name"]: p["visitor"] for p in device["properties"]}
    assert visitors["Line1.Motor.Current"] == {"browse_path": "1:Line1/1:Motor/1:Current", "mode": "poll",
                                               "data_type": "Float"}
    assert fieldgate("check", str(deep)).returncode == 0


def test_browse_of_a_server_that_is_not_there_says_so_in_one_line(tmp_path: Path) -> None:
    done = fieldgate("browse", "opcua", f"opc.tcp://127.0.0.1:{free_port()}", "-o", str(tmp_path / "x.yaml"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fieldgate browse: cannot connect to opc.tcp://127.0.0.1:"), lines
    assert not (tmp_path / "x.yaml").exists()
    done = fieldgate("browse", "opcua", "http://nowhere")
    assert done.returncode == 2 and "endpoint" in done.stderr, done.stderr
