"""systemd integration (a built-in plugin): READY=1 once started, STOPPING=1 on shutdown, and watchdog pings.

Only active when systemd sets $NOTIFY_SOCKET (Type=notify) and, for the watchdog, $WATCHDOG_USEC. The pings come
from a task on the gateway's event loop, so a loop that blocks stops feeding the watchdog and systemd restarts
the service. The notify protocol is one datagram on a unix socket; no library needed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from gateway.api import GatewayAPI
from gateway.hookspecs import hookimpl

log = logging.getLogger(__name__)
WATCHDOG_TASK = "systemd-watchdog"


def notify(message: str) -> bool:
    """Send one sd_notify message; False when not run by systemd (no $NOTIFY_SOCKET) or the socket is gone."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(1.0)
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.warning("systemd notify %s failed: %s", message.split("=", 1)[0], exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Half the watchdog timeout systemd asked for, in seconds; None when there is no watchdog for this process."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2_000_000


async def feed_watchdog(interval: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval)


@hookimpl
def startup(gateway: GatewayAPI) -> None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    interval = watchdog_interval()
    if interval is not None:
        gateway.start_task(WATCHDOG_TASK, lambda: feed_watchdog(interval))
    notify(f"READY=1\nSTATUS=node {gateway.node_name}: {len(gateway.devices())} devices\nMAINPID={os.getpid()}")


@hookimpl
def shutdown(gateway: GatewayAPI) -> None:
    notify("STOPPING=1")
