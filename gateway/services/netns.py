"""Listening sockets inside another network namespace (a container's), for the node's services there.

Every network namespace routes 127.0.0.0/8 to its own `lo`, so a service address of the loopback network answers
inside a container's namespace when a socket listens on it *in that namespace*. A socket belongs to the namespace
its creating thread was in: a short-lived thread of its own enters the namespace (`setns`, which needs
CAP_SYS_ADMIN), creates and binds the sockets and ends; the sockets stay in that namespace, and the event loop serves
them like any other. The loop's own thread and the executor's threads never change namespace.

A `Namespace` holds a file descriptor of the namespace (not its pid, which a new process may take), and closing it
lets the namespace go once nothing else holds it: the sockets opened in it hold it too, so they must be closed
with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import ctypes.util
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

CLONE_NEWNET = 0x40000000
T = TypeVar("T")
_libc: ctypes.CDLL | None = None


@dataclass(frozen=True)
class Listen:
    """One socket to open: TCP (listening) or UDP (bound) on host:port."""

    host: str
    port: int
    protocol: str = "TCP"  # TCP or UDP


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace of `fd` (OSError with the kernel's errno else)."""
    if hasattr(os, "setns"):  # Python 3.12
        os.setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def entering_problem() -> str:
    """"" when this process may enter other network namespaces (setns needs CAP_SYS_ADMIN), else why it may not:
    a thread of its own tries to enter the namespace it is in already. Capabilities are per thread and a new thread
    has its creator's: ask from the thread whose privilege counts (the event loop's)."""
    try:
        own = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"cannot open /proc/self/ns/net: {exc.strerror or exc}"
    try:
        in_thread(own, lambda: None).result(timeout=10)
    except (OSError, concurrent.futures.TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        os.close(own)
    return ""


def in_thread(fd: int, work: Callable[[], T], discard: Callable[[T], None] | None = None
              ) -> concurrent.futures.Future[T]:
    """Run `work` in a new thread that first enters the namespace of `fd`; the thread goes back to its own
    namespace (or ends in the other one, which is as good: it ends) and is never reused. The thread enters through
    a copy of `fd` of its own, so the caller may close `fd` meanwhile; a result nobody waits for any more (the waiter
    was cancelled or timed out) goes to `discard`."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    target = os.dup(fd)

    def run() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            os.close(target)
            future.set_exception(exc)
            return
        try:
            setns(target)
        except OSError as exc:
            os.close(own)
            future.set_exception(PermissionError(exc.errno, f"setns into the container's network namespace: "
                                                            f"{exc.strerror}"))
            return
        finally:
            os.close(target)
        try:
            result = work()
        except BaseException as exc:  # handed to the waiter
            if not future.cancelled():
                future.set_exception(exc)
        else:
            try:
                future.set_result(result)
            except concurrent.futures.InvalidStateError:  # cancelled meanwhile
                if discard is not None:
                    discard(result)
        finally:
            try:
                setns(own)
            except OSError:
                pass  # the thread ends here anyway
            os.close(own)

    try:
        threading.Thread(target=run, name="netns", daemon=True).start()
    except BaseException:
        os.close(target)
        raise
    return future


def close_sockets(opened: list[socket.socket | OSError]) -> None:
    for sock in opened:
        if isinstance(sock, socket.socket):
            sock.close()


def open_sockets(wanted: list[Listen]) -> list[socket.socket | OSError]:
    """Open every socket of `wanted` in the calling thread's namespace: each one or why it could not be opened."""
    opened: list[socket.socket | OSError] = []
    for item in wanted:
        kind = socket.SOCK_STREAM if item.protocol == "TCP" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET, kind)
        try:
            if item.protocol == "TCP":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((item.host, item.port))
            if item.protocol == "TCP":
                sock.listen(100)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            opened.append(exc)
            continue
        opened.append(sock)
    return opened


class Namespace:
    """A network namespace held open by a file descriptor of it (`/proc/<pid>/ns/net` of a process in it)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino

    @classmethod
    def of(cls, pid: int) -> Namespace:
        return cls(f"/proc/{pid}/ns/net")

    def is_own(self) -> bool:
        """Whether it is the namespace the gateway itself runs in."""
        return os.stat("/proc/self/ns/net").st_ino == self.inode

    def open_blocking(self, wanted: list[Listen]) -> list[socket.socket | OSError]:
        """Open the sockets in this namespace (waits for the thread; PermissionError without the privilege)."""
        return in_thread(self.fd, lambda: open_sockets(wanted), close_sockets).result(timeout=30)

    async def open(self, wanted: list[Listen]) -> list[socket.socket | OSError]:
        """The same without blocking the event loop."""
        if not wanted:
            return []
        opening = in_thread(self.fd, lambda: open_sockets(wanted), close_sockets)
        return await asyncio.wait_for(asyncio.wrap_future(opening), 30)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
