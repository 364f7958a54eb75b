"""Settings of the local UI (gateway/store/settings.py)."""

from __future__ import annotations

from pathlib import Path

from gateway.store import Store


async def test_settings_are_kept_by_key_and_read_by_prefix(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        await store.settings.put({"plot.window": "1h", "plot.buckets": "120", "theme": "dark"}, "admin")
        await store.settings.put({"plot.window": "6h"}, "operator")
        assert await store.settings.get("plot.") == {"plot.window": "6h", "plot.buckets": "120"}
        assert await store.settings.get("") == {"plot.window": "6h", "plot.buckets": "120", "theme": "dark"}
    finally:
        await store.close()
