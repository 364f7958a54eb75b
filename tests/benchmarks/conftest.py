"""The benchmarks that build and boot the appliance image (markers `benchmark` and `image`) run only when the
marker expression names both (-m "benchmark and image"): -m benchmark or -m image alone leaves them out."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    expression = config.getoption("markexpr", "") or ""
    if "benchmark" in expression and "image" in expression:
        return
    kept = [item for item in items
            if item.get_closest_marker("image") is None or item.get_closest_marker("benchmark") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
