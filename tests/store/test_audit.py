"""The audit log (gateway/store/audit.py)."""

from __future__ import annotations

from pathlib import Path

from gateway.store import Store


async def test_the_audit_log_pages_newest_first_and_by_actor(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        for i in range(5):
            await store.audit.record("alice" if i % 2 else "bob", "set-desired", f"default/d/p{i}", str(i), "10.0.0.1")
        recent = await store.audit.recent(limit=2)
        assert [e["target"] for e in recent] == ["default/d/p4", "default/d/p3"]
        assert set(recent[0]) == {"ts", "actor", "action", "target", "detail", "address"}
        first = await store.audit.page(2)
        assert [e["detail"] for e in first] == ["4", "3"]
        older = await store.audit.page(2, before=first[-1]["id"])
        assert [e["detail"] for e in older] == ["2", "1"]
        assert [e["detail"] for e in await store.audit.page(10, actor="alice")] == ["3", "1"]
    finally:
        await store.close()
