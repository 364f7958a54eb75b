"""The node's durable file outbox: a file a local app puts (`PUT /api/v1/files/<name>`) or drops into the outbox
folder is moved to `<data dir>/file-transfers/outbox/<id>` and recorded in the store before it counts as taken; the
uplink sends it and removes it once the registry has it whole and verified."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import mimetypes
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.durable import place
from gateway.errors import ConfigError
from gateway.files import default_outbox_folder, transfers_dir
from gateway.files.area import check_relative

if TYPE_CHECKING:
    from gateway.store import Store

log = logging.getLogger(__name__)
BLOCK = 1 << 20


class TooLarge(ConfigError):
    """A file over the size a local app may put into the outbox, or one that would pass the outbox's quota."""


def outbox_path(data_dir: Path, file_id: str) -> Path:
    return transfers_dir(data_dir) / "outbox" / file_id


def check_name(name: str) -> str:
    if not name or len(name) > 255 or check_relative(name, "name") != [name]:
        raise ConfigError(f"name {name[:200]!r}: expected one file name (no '/', not '..', at most 255 characters)")
    return name


async def _check_room(store: Store, size: int, limit: int, quota: int) -> None:
    if size > limit:
        raise TooLarge(f"the file has {size} bytes, more than the {limit} the node takes into its outbox "
                       "(files.max_upload)")
    waiting = await store.files.outbox_bytes()
    if waiting + size > quota:
        raise TooLarge(f"the outbox holds {waiting} bytes: {size} more would pass its quota of {quota} "
                       "(files.outbox_quota)")


async def take_stream(store: Store, data_dir: Path, name: str, chunks: AsyncIterator[bytes], *, limit: int,
                      quota: int, content_type: str | None = None, labels: dict[str, str] | None = None,
                      source: str = "api") -> dict[str, Any]:
    """Write a streamed body to the outbox (fsynced, then renamed into place) and record it; its record."""
    check_name(name)
    await _check_room(store, 0, limit, quota)
    file_id = secrets.token_hex(16)
    final = outbox_path(data_dir, file_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{file_id}.tmp")
    digest = hashlib.sha256()
    size = 0
    try:
        with temporary.open("wb") as stream:
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the file is larger than the {limit} bytes the node takes into its outbox "
                                   "(files.max_upload)")
                digest.update(chunk)
                await asyncio.to_thread(stream.write, chunk)
            await asyncio.to_thread(_sync, stream)
        await _check_room(store, size, limit, quota)
        await asyncio.to_thread(place, temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return await _record(store, file_id, name, size, digest.hexdigest(), content_type, labels or {}, source)


def _sync(stream: Any) -> None:
    stream.flush()
    os.fsync(stream.fileno())


async def _record(store: Store, file_id: str, name: str, size: int, sha256: str, content_type: str | None,
                  labels: dict[str, str], source: str) -> dict[str, Any]:
    record = {"id": file_id, "name": name, "size": size, "sha256": sha256,
              "content_type": content_type or mimetypes.guess_type(name)[0] or "application/octet-stream",
              "labels": labels, "source": source}
    try:
        await store.files.add_outbox(record)
    except BaseException:
        await asyncio.to_thread(outbox_path(store.data_dir, file_id).unlink, missing_ok=True)
        raise
    log.info("file %s (%d bytes) is in the outbox for the registry as %s", name, size, file_id)
    return {**record, "state": "queued", "position": 0}


async def take_file(store: Store, data_dir: Path, path: Path, *, limit: int, quota: int) -> dict[str, Any]:
    """Move a file from the outbox folder into the outbox (a rename on one file system, else a copy and a
    removal) and record it."""
    name = check_name(path.name)
    size = (await asyncio.to_thread(path.stat)).st_size
    await _check_room(store, size, limit, quota)
    file_id = secrets.token_hex(16)
    final = outbox_path(data_dir, file_id)
    final.parent.mkdir(parents=True, exist_ok=True)

    def move() -> str:
        temporary = final.with_name(f".{file_id}.tmp")
        copied = False
        try:
            os.replace(path, temporary)
        except OSError:  # another file system: copy; the original goes once the copy is durably in place
            import shutil

            shutil.copyfile(path, temporary)
            copied = True
        try:
            digest = hashlib.sha256()
            with temporary.open("rb") as stream:
                while block := stream.read(BLOCK):
                    digest.update(block)
                os.fsync(stream.fileno())
            place(temporary, final)
        except BaseException:
            if copied:
                temporary.unlink(missing_ok=True)
            else:  # back where it was, to be taken at the next look
                os.replace(temporary, path)
            raise
        if copied:
            path.unlink()
        return digest.hexdigest()

    sha256 = await asyncio.to_thread(move)
    return await _record(store, file_id, name, final.stat().st_size, sha256, None, {}, "folder")


class FolderWatcher:
    """Polls the outbox folder: a regular file whose size and time stay the same between two looks goes into the
    outbox (a file still being written changes between them; one renamed in does not)."""

    def __init__(self, store: Store, data_dir: Path, folder: Path | None = None) -> None:
        self.store = store
        self.data_dir = data_dir
        self.folder = folder or default_outbox_folder(data_dir)
        self._seen: dict[str, tuple[int, int]] = {}
        self.refused: dict[str, str] = {}  # name → why it stays in the folder

    async def look(self, limit: int, quota: int) -> list[dict[str, Any]]:
        """One look; the records of the files taken."""
        self.folder.mkdir(parents=True, exist_ok=True)
        seen: dict[str, tuple[int, int]] = {}
        taken = []
        for entry in sorted(os.scandir(self.folder), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue  # hidden files are still being written by convention; symlinks are not taken
            stat = entry.stat(follow_symlinks=False)
            seen[entry.name] = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(entry.name) != seen[entry.name] or entry.name in self.refused:
                continue
            try:
                taken.append(await take_file(self.store, self.data_dir, Path(entry.path), limit=limit, quota=quota))
            except ConfigError as exc:
                self.refused[entry.name] = str(exc)
                log.warning("outbox folder: %s stays where it is: %s", entry.name, exc)
            seen.pop(entry.name, None)
        self.refused = {name: why for name, why in self.refused.items() if name in seen}
        self._seen = seen
        return taken
