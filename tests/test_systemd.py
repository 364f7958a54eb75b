"""systemd notify: READY=1 once started, WATCHDOG=1 from the event loop at half of WATCHDOG_USEC, STOPPING=1.

A stopped process (SIGSTOP) stands in for a blocked event loop: no ping may arrive while it is stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.ops import systemd
from tests.conftest import FIELDGATE, free_port
from tests.test_runtime import MODEL, virtual_device


@pytest.fixture
def notify_socket() -> Iterator[socket.socket]:
    # A short directory of its own: a unix socket path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="fg-") as directory:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(Path(directory) / "notify"))
        yield sock
        sock.close()


def receive(sock: socket.socket, timeout: float) -> list[str]:
    """Every message that arrives within `timeout` seconds."""
    messages = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return messages


def receive_until(sock: socket.socket, prefix: str, timeout: float = 20.0) -> list[str]:
    messages: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            messages.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if messages[-1].startswith(prefix):
            return messages
    raise AssertionError(f"no {prefix} message; got {messages}")


def test_ready_watchdog_and_stopping(tmp_path: Path, notify_socket: socket.socket) -> None:
    config = tmp_path / "gw.yaml"
    config.write_text(MODEL.replace("eventbus: {url: none}", "eventbus: {url: none}\nhttp: {listen: "
                                    f"\"127.0.0.1:{free_port()}\"}}") + virtual_device("d1"))
    env = {**os.environ, "NOTIFY_SOCKET": notify_socket.getsockname(), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    process = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(tmp_path / "data")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = receive_until(notify_socket, "READY=1")
        assert "MAINPID=" in ready[-1]
        pings = receive(notify_socket, 2.0)
        assert 5 <= len(pings) <= 28 and set(pings) == {"WATCHDOG=1"}, pings  # every 100 ms (a busy box: fewer)

        process.send_signal(signal.SIGSTOP)
        receive(notify_socket, 0.15)  # a ping already on its way
        assert receive(notify_socket, 1.0) == []
        process.send_signal(signal.SIGCONT)
        assert len(receive(notify_socket, 0.5)) >= 3

        process.send_signal(signal.SIGTERM)
        receive_until(notify_socket, "STOPPING=1")
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_nothing_is_sent_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # the watchdog is another process's
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.delenv("WATCHDOG_USEC")
    assert systemd.watchdog_interval() is None


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"fieldgate-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STATUS=hello")
        sock.settimeout(2)
        assert sock.recv(100) == b"STATUS=hello"
