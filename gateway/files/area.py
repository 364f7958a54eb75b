"""The files area: where a file the registry sends may land, and how it lands (never outside the area).

A destination is checked twice: as text (no `..`, not absolute, no backslash or control character) and on disk
(every directory on the way, resolved with its symlinks, must stay inside the area; the final name must not be a
symlink). A file lands by an atomic rename of a fsynced temporary file in the same file system, so a reader never
sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.errors import ConfigError


class Refused(ConfigError):
    """A file the node will not take: the reason is said to the registry and nothing is written."""


def check_relative(path: str, what: str = "path") -> list[str]:
    """The elements of a relative path, refused when absolute, with `..`, a backslash or a control character."""
    if path.startswith("/"):
        raise Refused(f"{what} {path[:200]!r} is absolute: files stay in the node's files area")
    if "\\" in path or not path.isprintable() or "\x00" in path:
        raise Refused(f"{what} {path[:200]!r}: a backslash or a control character is not allowed")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise Refused(f"{what} {path[:200]!r} has '..': files stay in the node's files area")
    return parts


def destination(area: Path, path: str, name: str) -> Path:
    """Where `name` goes under `path` in `area` (the directories on the way made), refused when it would leave
    the area, through a symlink too."""
    directories = check_relative(path, "path")
    if not name or check_relative(name, "name") != [name]:
        raise Refused(f"name {name[:200]!r}: expected one file name")
    area.mkdir(parents=True, exist_ok=True)
    root = area.resolve()
    current = root
    for part in directories:
        current = current / part
        if current.is_symlink() or (current.exists() and not current.is_dir()):
            target = current.resolve()
            if not target.is_relative_to(root) or not target.is_dir():
                raise Refused(f"path {path[:200]!r}: {part} is a symlink or a file leading out of the files area")
        current.mkdir(exist_ok=True)
        current = current.resolve()
        if not current.is_relative_to(root):
            raise Refused(f"path {path[:200]!r} leads out of the files area")
    final = current / name
    if final.is_symlink():
        raise Refused(f"{'/'.join([*directories, name])[:200]} is a symlink in the files area: not replaced")
    if final.exists() and final.is_dir():
        raise Refused(f"{'/'.join([*directories, name])[:200]} is a directory in the files area")
    return final


def usage(area: Path) -> int:
    """Bytes of the regular files in the area (symlinks not followed)."""
    total = 0
    for directory, _, names in os.walk(area):
        for name in names:
            try:
                stat = os.lstat(os.path.join(directory, name))
            except FileNotFoundError:
                continue
            total += stat.st_size if not os.path.islink(os.path.join(directory, name)) else 0
    return total
