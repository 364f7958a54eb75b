"""A Snap7 server (the native snap7 library, through python-snap7 2.x) for the tests, run as a child process.

    PYTHONPATH=<python-snap7 2.x> python s7_server.py PORT DB1=1024 DB2=512 M=256 I=64 Q=64

Prints `ready` when it listens on 127.0.0.1:PORT; then answers one JSON line per command line on stdin:
`{"op": "get", "area": "DB1", "start": 0, "size": 4}` -> `{"hex": "..."}`,
`{"op": "set", "area": "DB1", "start": 0, "hex": "..."}` -> `{"ok": true}`; it stops at the end of stdin.
"""

from __future__ import annotations

import ctypes
import json
import sys

import snap7
from snap7.server import Server
from snap7.type import SrvArea

AREAS = {"DB": SrvArea.DB, "M": SrvArea.MK, "I": SrvArea.PE, "Q": SrvArea.PA}


def area_key(name: str) -> tuple[SrvArea, int]:
    if name.startswith("DB"):
        return SrvArea.DB, int(name[2:])
    return AREAS[name], 0


def main() -> int:
    port = int(sys.argv[1])
    assert snap7.__version__.startswith("2."), f"needs the native python-snap7 2.x, got {snap7.__version__}"
    server = Server(log=False)
    memory: dict[str, ctypes.Array[ctypes.c_ubyte]] = {}
    for spec in sys.argv[2:]:
        name, size = spec.split("=")
        memory[name] = (ctypes.c_ubyte * int(size))()
        server.register_area(*area_key(name), memory[name])
    server.start_to("127.0.0.1", port)
    print("ready", flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        name = command["area"]
        buffer = memory[name]
        kind, index = area_key(name)
        server.lock_area(kind, index)
        try:
            start = command["start"]
            if command["op"] == "get":
                answer: dict[str, object] = {"hex": bytes(buffer[start : start + command["size"]]).hex()}
            else:
                data = bytes.fromhex(command["hex"])
                ctypes.memmove(ctypes.addressof(buffer) + start, data, len(data))
                answer = {"ok": True}
        finally:
            server.unlock_area(kind, index)
        print(json.dumps(answer), flush=True)
    server.stop()
    server.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
