"""The files area's checks, the bandwidth cap and the node's file records, without processes: every way out of the
area is refused before anything is written, the token bucket holds its rate, and the outbox and received files
survive a reopened store."""

from __future__ import annotations

import asyncio
import errno
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import gateway.files.outbox as outbox_module
from gateway.durable import place
from gateway.files.area import Refused, destination, usage
from gateway.files.bucket import TokenBucket
from gateway.files.outbox import FolderWatcher, TooLarge, take_stream
from gateway.store import Store


@pytest.mark.parametrize(("path", "name", "why"), [
    ("../up", "a.bin", "'..'"), ("a/../../up", "a.bin", "'..'"), ("/etc", "a.bin", "absolute"),
    ("", "../a.bin", "'..'"), ("", "a/b.bin", "one file name"), ("", "..", "'..'"), ("", "", "one file"),
    ("a\\b", "x", "backslash"), ("ok", "bad\nname", "control"), ("ok", "nul\x00", "control"),
])
def test_names_and_paths_out_of_the_area_are_refused(tmp_path: Path, path: str, name: str, why: str) -> None:
    area = tmp_path / "files"
    with pytest.raises(Refused, match=why):
        destination(area, path, name)
    assert list(tmp_path.rglob("*")) in ([], [area])  # nothing made beside the area itself


def test_symlinks_out_of_the_area_are_refused_and_links_inside_are_followed(tmp_path: Path) -> None:
    area, outside = tmp_path / "files", tmp_path / "outside"
    (area / "inside").mkdir(parents=True)
    outside.mkdir()
    (area / "out").symlink_to(outside)
    (area / "alias").symlink_to(area / "inside")
    (area / "inside" / "target.txt").symlink_to(outside / "target.txt")
    with pytest.raises(Refused, match="symlink"):
        destination(area, "out", "a.bin")
    with pytest.raises(Refused, match="symlink"):
        destination(area, "out/deeper", "a.bin")
    with pytest.raises(Refused, match="symlink"):
        destination(area, "inside", "target.txt")  # the name itself a link out: not replaced
    assert destination(area, "alias/new", "a.bin") == (area / "inside" / "new" / "a.bin").resolve()
    assert list(outside.iterdir()) == []
    temporary = tmp_path / "incoming"
    temporary.write_bytes(b"12345")
    final = destination(area, "docs", "n.txt")
    place(temporary, final)
    assert final.read_bytes() == b"12345" and not temporary.exists()
    assert usage(area) == 5  # links not counted


async def test_the_token_bucket_holds_its_rate() -> None:
    bucket = TokenBucket(4 << 20)  # 4 MiB/s, a burst of a quarter second's worth (1 MiB)
    started = time.monotonic()
    for _ in range(12):
        await bucket.take(1 << 20)
    elapsed = time.monotonic() - started
    assert 2.0 < elapsed < 4.5, elapsed  # 12 MiB: 1 at once, 11 more at 4 MiB/s
    unlimited = TokenBucket(None)
    started = time.monotonic()
    for _ in range(100):
        await unlimited.take(1 << 20)
    assert time.monotonic() - started < 0.5


async def chunks(*blocks: bytes) -> AsyncIterator[bytes]:
    for block in blocks:
        await asyncio.sleep(0)
        yield block


async def test_the_outbox_keeps_its_files_across_a_reopened_store(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        record = await take_stream(store, tmp_path, "a.csv", chunks(b"t,v\n", b"1,2\n"), limit=100,
                                   quota=1000)
        with pytest.raises(TooLarge, match=r"files\.max_upload"):
            await take_stream(store, tmp_path, "big.csv", chunks(b"x" * 60, b"x" * 60), limit=100,
                              quota=1000)
        with pytest.raises(TooLarge, match="outbox_quota"):
            await take_stream(store, tmp_path, "more.csv", chunks(b"x" * 10), limit=100, quota=12)
        folder = tmp_path / "drop"
        watcher = FolderWatcher(store, tmp_path, folder)
        assert await watcher.look(100, 1000) == []
        (folder / "later.bin").write_bytes(b"abc")
        assert await watcher.look(100, 1000) == []  # seen once: it may still be growing
        taken = await watcher.look(100, 1000)
        assert [t["name"] for t in taken] == ["later.bin"] and not (folder / "later.bin").exists()
    finally:
        await store.close()
    store = Store(tmp_path)
    await store.open()
    try:
        queued = await store.files.outbox_queue()
        assert [(q["name"], q["size"], q["state"]) for q in queued] == [("a.csv", 8, "queued"), ("later.bin", 3,
                                                                                                 "queued")]
        assert queued[0]["id"] == record["id"]
        assert sorted(p.name for p in (tmp_path / "file-transfers" / "outbox").iterdir()) == sorted(
            q["id"] for q in queued)  # no temporary file left by the refused ones
    finally:
        await store.close()


def spy_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the path of every file and directory fsynced from now on."""
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


@pytest.mark.parametrize("other_file_system", [False, True])
async def test_a_file_leaves_the_outbox_folder_only_once_it_is_durably_in_the_outbox(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other_file_system: bool) -> None:
    folder = tmp_path / "drop"
    outbox = tmp_path / "file-transfers" / "outbox"
    if other_file_system:  # a rename out of the folder fails as it does across file systems (EXDEV)
        real_replace = os.replace

        def replace(source: Any, target: Any) -> None:
            if Path(source).parent == folder:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            real_replace(source, target)

        monkeypatch.setattr(os, "replace", replace)
    store = Store(tmp_path)
    await store.open()
    try:
        watcher = FolderWatcher(store, tmp_path, folder)
        await watcher.look(100, 1000)
        (folder / "reading.csv").write_bytes(b"t,v\n1,2\n")
        await watcher.look(100, 1000)

        def failing_place(temporary: Path, final: Path) -> None:
            raise OSError(errno.EIO, "Input/output error")

        monkeypatch.setattr(outbox_module, "place", failing_place)
        with pytest.raises(OSError, match="Input/output"):
            await watcher.look(100, 1000)
        assert (folder / "reading.csv").read_bytes() == b"t,v\n1,2\n"  # not lost: still in its folder
        assert list(outbox.iterdir()) == []  # and no half-moved copy left
        assert await store.files.outbox_queue() == []

        monkeypatch.setattr(outbox_module, "place", place)
        synced = spy_fsyncs(monkeypatch)
        taken = await watcher.look(100, 1000)  # unchanged since it was seen: taken at this look
        assert [t["name"] for t in taken] == ["reading.csv"] and not (folder / "reading.csv").exists()
        stored = outbox / taken[0]["id"]
        assert stored.read_bytes() == b"t,v\n1,2\n"
        # the copy's bytes, then the outbox folder's entry for it, were on the disk before the original went
        assert synced[-1] == str(outbox), synced

        synced.clear()
        record = await take_stream(store, tmp_path, "b.csv", chunks(b"x" * 10), limit=100, quota=1000)
        assert (outbox / record["id"]).read_bytes() == b"x" * 10
        assert synced[-1] == str(outbox), synced  # the rename into place made durable
    finally:
        await store.close()
