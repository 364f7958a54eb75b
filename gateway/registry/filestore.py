"""Where the registry keeps file bytes, by file id: a directory (the data dir's `files/` by default, or any
directory replicas share) or S3-compatible object storage (`registry serve --files s3://bucket/prefix`).

A file grows as a *part* until it is whole: chunks are appended at the part's size only (the acknowledged offset a
sender resumes from), each written and fsynced before it is acknowledged. `commit` makes the part the file: an
atomic rename in a directory, an upload (multipart, by boto3) to S3. Parts are kept in a directory in both cases
(on S3, the spool in the registry's data dir), so a part's bytes are at the replica that took them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

from gateway.durable import place
from gateway.errors import ConfigError, NotFound, StoreError
from gateway.wire import FILE_ID

READ_BLOCK = 1 << 20


class OffsetMismatch(ConfigError):
    """A chunk that does not start at the part's size; `offset` is where the part ends (what the sender resumes
    from)."""

    def __init__(self, offset: int, given: int) -> None:
        super().__init__(f"offset {given}: the registry holds {offset} bytes of this file; send from there")
        self.offset = offset


def _check_id(file_id: str) -> str:
    if not FILE_ID.match(file_id):
        raise ConfigError(f"file id {file_id!r}: expected 32 hex digits")
    return file_id


class ContentStore(Protocol):
    """What the registry needs of a place for file bytes."""

    description: str

    async def part_size(self, file_id: str) -> int: ...

    async def append(self, file_id: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset`, which must be the part's size (OffsetMismatch otherwise), durably; the new
        size."""
        ...

    async def part_sha256(self, file_id: str) -> str: ...

    async def commit(self, file_id: str) -> None:
        """The whole part becomes the file `file_id`."""
        ...

    async def drop_part(self, file_id: str) -> None: ...

    async def size(self, file_id: str) -> int:
        """The size of the file; NotFound when there is none."""
        ...

    async def read(self, file_id: str, offset: int, size: int) -> bytes: ...

    def stream(self, file_id: str, offset: int = 0) -> AsyncIterator[bytes]: ...

    async def delete(self, file_id: str) -> None: ...


class _Parts:
    """Parts in a directory: appended at their size, fsynced before the size is acknowledged."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._locks: dict[str, asyncio.Lock] = {}

    def path(self, file_id: str) -> Path:
        return self.directory / _check_id(file_id)

    async def part_size(self, file_id: str) -> int:
        try:
            return self.path(file_id).stat().st_size
        except FileNotFoundError:
            return 0

    async def append(self, file_id: str, offset: int, data: bytes) -> int:
        lock = self._locks.setdefault(file_id, asyncio.Lock())
        async with lock:  # two chunks of one file at once: one of them is at the wrong offset
            return await asyncio.to_thread(self._append, self.path(file_id), offset, data)

    def _append(self, path: Path, offset: int, data: bytes) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if offset != size:
                raise OffsetMismatch(size, offset)
            os.pwrite(fd, data, offset)
            os.fsync(fd)
            return offset + len(data)
        finally:
            os.close(fd)

    async def part_sha256(self, file_id: str) -> str:
        return await asyncio.to_thread(_sha256_of, self.path(file_id))

    async def drop_part(self, file_id: str) -> None:
        self.path(file_id).unlink(missing_ok=True)
        self._locks.pop(file_id, None)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as stream:
            while block := stream.read(READ_BLOCK):
                digest.update(block)
    except FileNotFoundError:
        pass
    return digest.hexdigest()


class DirectoryStore(_Parts):
    """Files in `<root>/objects/<id>`, parts in `<root>/parts/<id>`; a part becomes the file by an atomic rename."""

    def __init__(self, root: Path) -> None:
        super().__init__(root / "parts")
        self.root = root
        self.objects = root / "objects"
        self.description = f"directory {root}"

    def _object(self, file_id: str) -> Path:
        return self.objects / _check_id(file_id)

    async def commit(self, file_id: str) -> None:
        def move() -> None:
            self.objects.mkdir(parents=True, exist_ok=True)
            place(self.path(file_id), self._object(file_id))  # the rename itself survives a power cut

        await asyncio.to_thread(move)

    async def size(self, file_id: str) -> int:
        try:
            return self._object(file_id).stat().st_size
        except FileNotFoundError:
            raise NotFound(f"no bytes of file {file_id} in {self.description}") from None

    async def read(self, file_id: str, offset: int, size: int) -> bytes:
        def read() -> bytes:
            with self._object(file_id).open("rb") as stream:
                stream.seek(offset)
                return stream.read(size)

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError:
            raise NotFound(f"no bytes of file {file_id} in {self.description}") from None

    async def stream(self, file_id: str, offset: int = 0) -> AsyncIterator[bytes]:
        position = offset
        while block := await self.read(file_id, position, READ_BLOCK):
            position += len(block)
            yield block

    async def delete(self, file_id: str) -> None:
        self._object(file_id).unlink(missing_ok=True)
        await self.drop_part(file_id)


class S3Store(_Parts):
    """Files as objects `<prefix>/<id>` in an S3 bucket (boto3, in threads); parts in the spool directory."""

    def __init__(self, url: str, spool: Path, *, endpoint: str | None = None, region: str | None = None,
                 access_key: str | None = None, secret_key: str | None = None) -> None:
        super().__init__(spool)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(f"--files {url}: expected s3://bucket/prefix")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.description = f"s3://{self.bucket}/{self.prefix}" + (f" at {endpoint}" if endpoint else "")
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError(f"--files {url}: S3 needs boto3 (pip install 'fieldgate[s3]')") from None
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint, region_name=region or "us-east-1", aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            config=Config(connect_timeout=10, read_timeout=60, retries={"max_attempts": 3}))

    def _key(self, file_id: str) -> str:
        return f"{self.prefix}/{_check_id(file_id)}" if self.prefix else _check_id(file_id)

    async def _call(self, what: str, method: Any, /, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(method, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                raise NotFound(f"no bytes of file {kwargs.get('Key', '')} in {self.description}") from None
            raise StoreError(f"{self.description}: {what}: {exc}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.description}: {what}: {exc}") from exc

    async def check(self) -> None:
        """The bucket is there and reachable (at start: a wrong endpoint or bucket is said at once)."""
        await self._call("head bucket", self.client.head_bucket, Bucket=self.bucket)

    async def commit(self, file_id: str) -> None:
        from boto3.s3.transfer import TransferConfig

        await self._call("upload", self.client.upload_file, Filename=str(self.path(file_id)), Bucket=self.bucket,
                         Key=self._key(file_id), Config=TransferConfig(multipart_chunksize=16 << 20))
        await self.drop_part(file_id)

    async def size(self, file_id: str) -> int:
        head = await self._call("head", self.client.head_object, Bucket=self.bucket, Key=self._key(file_id))
        return int(head["ContentLength"])

    async def read(self, file_id: str, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        try:
            answer = await self._call("get", self.client.get_object, Bucket=self.bucket, Key=self._key(file_id),
                                      Range=f"bytes={offset}-{offset + size - 1}")
        except StoreError as exc:
            if "InvalidRange" in str(exc):  # at or past the end
                return b""
            raise
        body = answer["Body"]
        try:
            data: bytes = await asyncio.to_thread(body.read)
        finally:
            body.close()
        return data

    async def stream(self, file_id: str, offset: int = 0) -> AsyncIterator[bytes]:
        position = offset
        while block := await self.read(file_id, position, 8 * READ_BLOCK):
            position += len(block)
            yield block

    async def delete(self, file_id: str) -> None:
        await self._call("delete", self.client.delete_object, Bucket=self.bucket, Key=self._key(file_id))
        await self.drop_part(file_id)


def open_content_store(data_dir: Path, files: str | None) -> DirectoryStore | S3Store:
    """The content store `--files` names: none for `<data dir>/files`, a directory, or s3://bucket/prefix with
    the endpoint and credentials from FIELDGATE_S3_ENDPOINT, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    AWS_REGION (boto3's own chain when unset)."""
    if not files:
        return DirectoryStore(data_dir / "files")
    if files.startswith("s3://"):
        return S3Store(files, data_dir / "files" / "spool", endpoint=os.environ.get("FIELDGATE_S3_ENDPOINT") or None,
                       region=os.environ.get("AWS_REGION") or None,
                       access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
                       secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None)
    if re.match(r"^[a-z][a-z0-9+.-]*://", files):
        raise ConfigError(f"--files {files}: expected a directory or s3://bucket/prefix")
    return DirectoryStore(Path(files))
