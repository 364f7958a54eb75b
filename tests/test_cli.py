"""The command line: exit 0 on success, 2 on bad input with one line per reason."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from gateway import __version__
from gateway.store import Store
from gateway.web.auth import authenticate_user
from tests.conftest import FIELDGATE, free_port
from tests.resources.test_loader import VALID
from tests.test_runtime import MODEL, virtual_device


def fieldgate(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIELDGATE, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    result = fieldgate("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"fieldgate {__version__}"


def test_check_valid_file(tmp_path: Path) -> None:
    (tmp_path / "plant.yaml").write_text(VALID)
    result = fieldgate("check", str(tmp_path / "plant.yaml"))
    assert result.returncode == 0, result.stderr
    assert "valid (1 Device, 1 DeviceModel, 1 Gateway)" in result.stdout


def test_check_broken_file_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    broken = VALID.replace("desired: 21.5", "desired: 500").replace("model: thermo", "model: thermo\ncolor: 1")
    (tmp_path / "plant.yaml").write_text(broken + "---\nkind: Route\nname: r\nsource: a\ntarget: b\n")
    result = fieldgate("check", str(tmp_path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{tmp_path}/plant.yaml: document 3 (Device boiler-1): $: Object contains unknown field color",
        f"{tmp_path}/plant.yaml: document 4 (Route r): $.source: no Endpoint default/a",
        f"{tmp_path}/plant.yaml: document 4 (Route r): $.target: no Endpoint default/b",
    ]
    assert result.stdout == ""


def test_check_refuses_nan_and_infinities_where_a_number_goes(tmp_path: Path) -> None:
    broken = VALID.replace("minimum: -40", "minimum: .nan").replace("desired: 21.5", "desired: .inf").replace(
        "offset: 20}", "offset: -.Inf}")
    (tmp_path / "plant.yaml").write_text(broken)
    result = fieldgate("check", str(tmp_path / "plant.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"{tmp_path}/plant.yaml: document 2 (DeviceModel thermo): $.properties[0].minimum: expected a finite number, "
        "got nan (NaN and infinities are no value)",
        f"{tmp_path}/plant.yaml: document 3 (Device boiler-1): $.properties[0].visitor.offset: expected a finite "
        "number, got -inf (NaN and infinities are no value)",
        f"{tmp_path}/plant.yaml: document 3 (Device boiler-1): $.properties[1].desired: expected a finite number, "
        "got inf (NaN and infinities are no value)",
    ]


def test_bad_input_is_one_line_exit_2(tmp_path: Path) -> None:
    for args in (("check", str(tmp_path / "missing.yaml")), ("frobnicate",), ("token", "create", "--role", "god"),
                 ("run", "-c", str(tmp_path / "missing.yaml"), "--data-dir", str(tmp_path))):
        result = fieldgate(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert "Traceback" not in result.stderr


def start_run(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path]:
    """`fieldgate run` with one virtual device, started (its log in the returned file)."""
    config = tmp_path / "gw.yaml"
    config.write_text(MODEL.replace("eventbus: {url: none}", "eventbus: {url: none}\nhttp: {listen: "
                                    f"\"127.0.0.1:{free_port()}\"}}") + virtual_device("d1"))
    log = tmp_path / "run.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([*FIELDGATE, "run", "-c", str(config), "--data-dir", str(tmp_path / "data")],
                                   stdout=subprocess.DEVNULL, stderr=sink)
    deadline = time.monotonic() + 30
    while " started: node " not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return process, log


def test_run_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    process, log = start_run(tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
        text = log.read_text()
        assert "SIGTERM: stopping (send it again to exit at once)" in text and "fieldgate stopped" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_a_second_stop_signal_exits_at_once(tmp_path: Path) -> None:
    process, log = start_run(tmp_path)
    try:
        # stopped, the process gets both signals together when it goes on: the second comes before any of the
        # clean shutdown has run, as when an operator presses Ctrl-C twice on a gateway that takes long to stop
        process.send_signal(signal.SIGSTOP)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGTERM)
        process.send_signal(signal.SIGCONT)
        code = process.wait(15)
        text = log.read_text()
        assert code in (128 + signal.SIGINT, 128 + signal.SIGTERM), (code, text)
        assert "exiting at once, without finishing the shutdown" in text
        assert "fieldgate stopped" not in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_run_with_port_in_use_exits_2(tmp_path: Path) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        config = tmp_path / "gw.yaml"
        config.write_text(f"kind: Gateway\nname: gw\nhttp: {{listen: \"127.0.0.1:{port}\"}}\n")
        result = fieldgate("run", "-c", str(config), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 2
    assert f"http.listen 127.0.0.1:{port}: cannot listen there" in result.stderr


async def test_user_add_reads_password_from_stdin(tmp_path: Path) -> None:
    result = fieldgate("user", "add", "alice", "--role", "operator", "--password-stdin", "--data-dir", str(tmp_path),
                       stdin="s3cret-pass\n")
    assert result.returncode == 0, result.stderr
    store = Store(tmp_path)
    await store.open()
    try:
        assert (await authenticate_user(store, "alice", "s3cret-pass")).role == "operator"
        assert (await store.audit.recent())[0]["action"] == "user-add"
    finally:
        await store.close()
    short = fieldgate("user", "add", "bob", "--role", "viewer", "--password-stdin", "--data-dir", str(tmp_path),
                      stdin="short\n")
    assert short.returncode == 2 and "at least 8 characters" in short.stderr


def test_token_create_prints_a_token(tmp_path: Path) -> None:
    result = fieldgate("token", "create", "--role", "admin", "--data-dir", str(tmp_path))
    assert result.returncode == 0
    assert result.stdout.startswith("fgt_") and len(result.stdout.strip()) > 40
