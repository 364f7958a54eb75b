"""Every codec test runs on each backend: the FieldTable classes are passed explicitly, not chosen by env."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import native
from gateway.codec import python as python_codec

BACKENDS: list[Any] = [pytest.param(python_codec.FieldTable, id="python")]
if native.available():
    from gateway.codec.native import FieldTable as NativeFieldTable

    BACKENDS.append(pytest.param(NativeFieldTable, id="c"))
else:
    BACKENDS.append(pytest.param(None, id="c", marks=pytest.mark.skip(reason="gateway._native is not built")))


@pytest.fixture(params=BACKENDS, scope="session")
def FieldTable(request: pytest.FixtureRequest) -> Any:
    return request.param
