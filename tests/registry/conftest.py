"""A registry (`fieldgate registry serve`) in a subprocess on a free loopback port, with its CLI beside it."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIELDGATE, free_port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def wait_until(check: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


class Registry:
    def __init__(self, data_dir: Path, db: str | None = None) -> None:
        self.data_dir = data_dir
        self.db_args = ["--db", db] if db else []
        self.serve_args: list[str] = []  # more `registry serve` options
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        """Where the registry's output goes (every start appends), for a failing test to show."""
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [*FIELDGATE, "registry", "serve", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
                 str(self.data_dir), "--heartbeat-interval", "1s", *self.db_args, *self.serve_args], stdout=log,
                stderr=log)
        wait_for_port(self.port, self.process)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*FIELDGATE, "registry", *args, "--data-dir", str(self.data_dir),
                                 *self.db_args], capture_output=True, text=True, timeout=30)
        if check and result.returncode != 0:
            raise AssertionError(f"registry {' '.join(args)}: exit {result.returncode}: {result.stderr}")
        return result

    def token(self, *args: str) -> str:
        return self.cli("join-token", "create", *args).stdout.strip()

    def nodes(self) -> dict[str, dict[str, Any]]:
        lines = self.cli("nodes", "--json").stdout.splitlines()
        return {node["name"]: node for node in map(json.loads, lines)}


def join(registry: Registry, token: str, data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FIELDGATE, "join", "--registry", registry.url, "--token", token, "--data-dir",
                           str(data_dir), *extra], capture_output=True, text=True, timeout=30)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    server = Registry(tmp_path / "registry")
    server.start()
    yield server
    if server.process is not None:
        stop(server.process)


PG_BIN = Path("/usr/lib/postgresql/15/bin")


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A private PostgreSQL 15 cluster for the test session on a free loopback port; its DSN."""
    import shutil
    import tempfile

    if not (PG_BIN / "initdb").exists() or shutil.which("runuser") is None:
        pytest.skip(f"PostgreSQL 15 binaries are not installed ({PG_BIN}/initdb); apt-get install postgresql")
    directory = Path(tempfile.mkdtemp(prefix="fieldgate-pg-"))
    shutil.chown(directory, "postgres", "postgres")
    port = free_port()

    def as_postgres(*args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=60)

    as_postgres(str(PG_BIN / "initdb"), "-D", str(directory / "data"), "-A", "trust", "-U", "fg")
    as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(directory / "data"), "-o",
                f"-p {port} -k {directory} -c listen_addresses=127.0.0.1", "-l", str(directory / "log"), "-w",
                "start")
    try:
        yield f"postgresql://fg@127.0.0.1:{port}/postgres"
    finally:
        as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(directory / "data"), "-m", "fast", "stop")
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str | None:
    """The registry store's database, once on SQLite in the data dir (None) and once on a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return None
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def pg_database(postgres: str) -> str:
    """A fresh database in the session's cluster for one test; its DSN."""
    import asyncio
    import secrets

    import asyncpg  # type: ignore[import-untyped]

    name = f"t{secrets.token_hex(6)}"

    async def create() -> None:
        connection = await asyncpg.connect(postgres, timeout=10)
        try:
            await connection.execute(f"CREATE DATABASE {name}")
        finally:
            await connection.close()

    asyncio.run(create())
    return postgres.rsplit("/", 1)[0] + f"/{name}"
