"""The node's registry identity on disk: written whole or not at all (a power cut at an appliance's first boot, when
it joins, must not leave empty certificate files), and a damaged one does not keep the gateway from starting."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from gateway.durable import write_durable
from gateway.pki import key_pem, new_key
from gateway.services.tls import contexts
from gateway.uplink.join import load_settings, registry_dir, save_identity
from gateway.wire import JoinResponse


def test_a_join_writes_each_file_whole_and_the_key_private(tmp_path: Path) -> None:
    key = new_key()
    answer = JoinResponse(node="gw-1", certificate="-----BEGIN CERTIFICATE-----\nnode\n", ca="ca",
                          heartbeat_interval=5.0)
    settings = save_identity(tmp_path, "https://registry:8443", b"-----BEGIN CERTIFICATE-----\nca\n", key, answer)
    directory = registry_dir(tmp_path)
    assert sorted(os.listdir(directory)) == ["ca.pem", "node.key", "node.pem", "registry.json"]  # no temporaries
    assert (directory / "node.key").read_bytes() == key_pem(key)
    assert stat.S_IMODE((directory / "node.key").stat().st_mode) == 0o600
    assert (directory / "node.pem").read_text() == answer.certificate
    assert load_settings(tmp_path) == settings


def test_a_durable_write_that_fails_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "ca.pem"
    write_durable(target, b"old")

    def no_room(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_room)
    with pytest.raises(OSError, match="No space left"):
        write_durable(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["ca.pem"]


def test_a_damaged_identity_turns_services_across_nodes_off_instead_of_failing_the_start(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = registry_dir(tmp_path)
    directory.mkdir()
    for name in ("ca.pem", "node.pem", "node.key"):  # as a power cut left them before the writes were durable
        (directory / name).write_bytes(b"")
    with caplog.at_level(logging.ERROR, logger="gateway.services.tls"):
        assert contexts(tmp_path) is None
    assert "cannot be used" in caplog.text and "services across nodes are off" in caplog.text
