"""Reading a store from outside a running gateway, for tests and checks: the history straight from the file, and the
reported values as a store opening it restores them."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import msgspec


def stored_history(db_file: Path, prop: str) -> list[tuple[str, int, Any]]:
    """(device, ts in ms, value) of every stored reading of a property, read straight from a store's file."""
    with contextlib.closing(sqlite3.connect(db_file)) as db:
        series = {int(sid): str(device) for sid, device in
                  db.execute("SELECT id, device FROM series WHERE property = ?", (prop,))}
        rows = db.execute("SELECT ts, vals FROM reports ORDER BY rowid").fetchall()
    found = []
    for ts, vals in rows:
        for sid, value in msgspec.msgpack.decode(vals).items():
            if sid in series:
                found.append((series[sid], int(ts), value))
    return found


def stored_reported(data_dir: Path, prop: str) -> dict[str, Any]:
    """The reported value of a property per device, as a store opened on `data_dir` restores them."""
    from gateway.store import Store

    async def read() -> dict[str, dict[str, dict[str, Any]]]:
        store = Store(data_dir)
        await store.open()
        try:
            return await store.twins.load()
        finally:
            await store.close()

    return {device: props[prop]["reported"] for device, props in asyncio.run(read()).items() if prop in props}
