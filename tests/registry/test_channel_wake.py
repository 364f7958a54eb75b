"""A change of registry documents wakes only the channels of the nodes it can concern: a Device its node, a Route the
nodes its selector or group takes (with the Endpoints it uses); the other channels do not look at the database
(counted by the registry's `fieldgate_registry_channel_syncs` on /metrics). A change another process writes to the
same SQLite file, which no notification tells of, still reaches its node: the sweep wakes every channel.

Ten light node channels (WebSocket over mutual TLS, certificates signed as a join signs them) on a real registry."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from gateway.channel import decode_frame, encode_frame
from gateway.pki import key_pem, make_csr, new_key
from gateway.registry.ca import CertificateAuthority, cert_pem
from gateway.registry.store import RegistryStore
from gateway.wire import Ack, Hello, Push, Welcome
from tests.conftest import FIELDGATE, free_port
from tests.registry.conftest import stop, wait_for_port

SITES = ["north", "north", "south", "south", "east", "east", "east", "east", "east", "east"]
NODES = [f"node-{n:02d}" for n in range(len(SITES))]


async def provision(data_dir: Path, certs: Path) -> None:
    ca = CertificateAuthority.load_or_create(data_dir)
    key = new_key()
    csr, key_text = make_csr(key), key_pem(key)
    certs.mkdir()  # noqa: ASYNC240  (set-up, before anything runs)
    async with RegistryStore(data_dir) as store:
        for name, site in zip(NODES, SITES, strict=True):
            cert = ca.sign_node(csr, name)
            (certs / f"{name}.pem").write_bytes(cert_pem(cert).encode() + key_text)
            await store.add_node(name, format(cert.serial_number, "x"), {"site": site}, 30.0)


class LightNode:
    def __init__(self, name: str, url: str, context: ssl.SSLContext) -> None:
        self.name = name
        self.url = url
        self.context = context
        self.pushes: list[Push] = []
        self.task: asyncio.Task[None] | None = None

    def documents(self) -> set[str]:
        """The kind and name of the documents of the newest push that carried them."""
        for push in reversed(self.pushes):
            if push.documents is not None:
                return {f"{d['kind']} {d['name']}" for d in push.documents}
        return set()

    async def run(self) -> None:
        from websockets.asyncio.client import connect

        async with connect(self.url, ssl=self.context, open_timeout=30, compression=None,
                           ping_interval=None) as socket:
            await socket.send(encode_frame(Hello()))
            assert isinstance(decode_frame(await socket.recv()), Welcome)
            while True:
                frame = decode_frame(await socket.recv())
                if isinstance(frame, Push):
                    self.pushes.append(frame)
                    await socket.send(encode_frame(Ack(seq=frame.seq)))


async def until(check: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def test_a_change_wakes_only_the_channels_of_the_nodes_it_concerns(tmp_path: Path) -> None:
    data_dir = tmp_path / "registry"
    asyncio.run(provision(data_dir, tmp_path / "certs"))

    def cli(*args: str) -> str:
        return subprocess.run([*FIELDGATE, "registry", *args, "--data-dir", str(data_dir)], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()

    cli("group", "create", "line-s", "--selector", "site=south")
    admin = cli("token", "create", "--role", "admin")
    port = free_port()
    process = subprocess.Popen([*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                                str(data_dir), "--heartbeat-interval", "30s"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        asyncio.run(_drive(port, tmp_path, data_dir, admin, cli))
    finally:
        stop(process)


async def _drive(port: int, tmp_path: Path, data_dir: Path, admin: str, cli: Any) -> None:
    nodes = {}
    for name in NODES:
        context = ssl.create_default_context(cafile=data_dir / "ca.pem")
        context.load_cert_chain(tmp_path / "certs" / f"{name}.pem")
        nodes[name] = LightNode(name, f"wss://localhost:{port}/api/v1/channel", context)
        nodes[name].task = asyncio.create_task(nodes[name].run())
    verify = ssl.create_default_context(cafile=data_dir / "ca.pem")
    async with httpx.AsyncClient(base_url=f"https://localhost:{port}", verify=verify, timeout=30,
                                 headers={"Authorization": f"Bearer {admin}"}) as client:

        async def syncs() -> int:
            text = (await client.get("/metrics")).text
            [line] = [line for line in text.splitlines() if line.startswith("fieldgate_registry_channel_syncs_total ")]
            return int(float(line.split()[1]))

        async def change(documents: list[dict[str, Any]], reached: dict[str, set[str]]) -> int:
            """Apply documents; wait for the nodes `reached` to have those documents; the channels' syncs it took
            (once the sweep has had two looks)."""
            before = {name: len(node.pushes) for name, node in nodes.items()}
            count = await syncs()
            applied = await client.post("/api/v1/documents", json=documents)
            assert applied.status_code == 200, applied.text
            for name, wanted in reached.items():
                await until(lambda n=name, w=wanted: w <= nodes[n].documents(), f"the push to {name}")
            await asyncio.sleep(2.5)  # two sweeps: a stray wake would show
            others = [name for name in nodes if name not in reached and len(nodes[name].pushes) != before[name]]
            assert others == [], f"pushed to {others}"
            return await syncs() - count

        await until(lambda: all(node.pushes for node in nodes.values()), "the first syncs")
        await asyncio.sleep(2.2)  # the sweep's first look
        for node in nodes.values():
            assert node.task is not None and not node.task.done()

        device = {"kind": "Device", "name": "valve", "node": "node-05", "protocol": {"name": "virtual", "config": {}},
                  "properties": [{"name": "level", "visitor": {"generator": "constant", "value": 1.0}}]}
        assert await change([device], {"node-05": {"Device valve"}}) == 1

        ends = [{"kind": "Endpoint", "name": "bus", "type": "bus"},
                {"kind": "Endpoint", "name": "uplink", "type": "mqtt", "properties": {"url": "mqtt://127.0.0.1:1"}}]
        north = {"kind": "Route", "name": "north-up", "node_selector": {"site": "north"}, "source": "bus",
                 "source_resource": {"topic": "devices/#"}, "target": "uplink",
                 "target_resource": {"topic": "n/{device}"}}
        wanted = {"Endpoint bus", "Endpoint uplink", "Route north-up"}
        assert await change([*ends, north], {"node-00": wanted, "node-01": wanted}) == 2  # by selector

        south = {**north, "name": "south-up", "node_selector": {}, "groups": ["line-s"]}
        wanted = {"Endpoint bus", "Endpoint uplink", "Route south-up"}
        assert await change([south], {"node-02": wanted, "node-03": wanted}) == 2  # by group

        # an Endpoint's change reaches the nodes of the Routes that use it, and only them
        moved = {**ends[1], "properties": {"url": "mqtt://127.0.0.1:2"}}
        assert await change([moved], {name: set() for name in ("node-00", "node-01", "node-02", "node-03")}) == 4

        # written by another process on the same file: no notification, so the sweep wakes every channel
        count = await syncs()
        (tmp_path / "pump.json").write_text(json.dumps({**device, "name": "pump", "node": "node-07"}))
        await asyncio.to_thread(cli, "apply", "-f", str(tmp_path / "pump.json"))
        await until(lambda: "Device pump" in nodes["node-07"].documents(), "the sweep's push to node-07")
        assert await syncs() - count >= len(NODES)

    for node in nodes.values():
        assert node.task is not None and not node.task.done(), f"the channel of {node.name} closed"
        node.task.cancel()
    await asyncio.gather(*(node.task for node in nodes.values() if node.task), return_exceptions=True)
