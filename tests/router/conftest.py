"""Every router test runs on each backend: the router classes are passed explicitly, not chosen by env."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import native
from gateway.router import python as python_router

BACKENDS: list[Any] = [pytest.param(python_router.TopicRouter, id="python")]
if native.available():
    from gateway.router.native import TopicRouter as NativeRouter

    BACKENDS.append(pytest.param(NativeRouter, id="c"))
else:
    BACKENDS.append(pytest.param(None, id="c", marks=pytest.mark.skip(reason="gateway._native is not built")))


@pytest.fixture(params=BACKENDS, scope="session")
def TopicRouter(request: pytest.FixtureRequest) -> Any:
    return request.param
