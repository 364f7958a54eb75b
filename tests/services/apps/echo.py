"""A TCP and UDP echo app for the services tests: every answer starts with the instance id, `<instance>|<data>`.

TCP on $FIELDGATE_PORT_ECHO (or $PORT), UDP on $FIELDGATE_PORT_DGRAM when given; the same address as the argument
(default 127.0.0.1)."""

import asyncio
import os
import sys

INSTANCE = os.environ.get("FIELDGATE_INSTANCE", "plain").encode()
HOST = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(INSTANCE + b"|" + data if data.startswith(b"who") else data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.transport.sendto(INSTANCE + b"|" + data, addr)  # type: ignore[attr-defined]


async def main() -> None:
    port = int(os.environ.get("FIELDGATE_PORT_ECHO") or os.environ["PORT"])
    server = await asyncio.start_server(echo, HOST, port)
    if os.environ.get("FIELDGATE_PORT_DGRAM"):
        await asyncio.get_running_loop().create_datagram_endpoint(
            Udp, local_addr=(HOST, int(os.environ["FIELDGATE_PORT_DGRAM"])))
    print("env", {k: v for k, v in os.environ.items() if k.endswith(("_SERVICE_HOST", "_SERVICE_PORT"))}, flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
