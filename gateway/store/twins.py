"""The stored half of the twins: desired values in `twins` (one row per series), reported values from the history's
latest values, both read back at start so that twins survive restarts."""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.store.db import Database
from gateway.store.history import History

_json = msgspec.json.Encoder()
_unjson = msgspec.json.Decoder()


class Twins:
    def __init__(self, db: Database, history: History) -> None:
        self._db = db
        self._history = history

    async def save_desired(self, device: str, prop: str, value: Any, at: float) -> None:
        async with self._db.transaction() as db:
            series = (await self._history.series_ids(db, [(device, prop)]))[(device, prop)]
            await db.execute(
                "INSERT INTO twins (series, desired, desired_at) VALUES (?, ?, ?) "
                "ON CONFLICT(series) DO UPDATE SET desired=excluded.desired, desired_at=excluded.desired_at",
                (series, _json.encode(value).decode(), at),
            )

    async def load(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Stored twin values by device and property: desired from `twins`, reported from the history."""
        result: dict[str, dict[str, dict[str, Any]]] = {}

        def entry(device: str, prop: str) -> dict[str, Any]:
            return result.setdefault(device, {}).setdefault(prop, {
                "desired": None, "desired_at": None, "reported": None, "reported_at": None, "quality": "unknown"})

        for device, prop, desired, desired_at in await self._db.rows(
            "SELECT device, property, desired, desired_at FROM twins JOIN series ON series.id = twins.series "
            "WHERE desired IS NOT NULL"
        ):
            item = entry(device, prop)
            item["desired"], item["desired_at"] = _unjson.decode(desired), desired_at
        for device, prop, value, at in self._history.latest():
            item = entry(device, prop)
            item["reported"], item["reported_at"], item["quality"] = value, at, "good"
        return result
