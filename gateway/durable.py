"""Files that survive a power cut whole: the old version or the new one, never an empty or a torn file.

A file is written beside its place, fsynced, renamed over it, and the directory fsynced so that the rename itself
survives. Used by the join's identity files, the file areas and the system updater's state (which root reads at
boot); standard library only, so the boot-time commands stay light.
"""

from __future__ import annotations

import os
from pathlib import Path


def place(temporary: Path, final: Path) -> None:
    """Rename a complete, fsynced temporary file to its place, and make the rename durable."""
    os.replace(temporary, final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_durable(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` durably: a temporary file beside it, fsynced, then `place`d."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)  # whatever the umask
        place(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
