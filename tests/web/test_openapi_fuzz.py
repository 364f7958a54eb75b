"""schemathesis against the node's REST API as its OpenAPI document describes it, with an admin token, the app
in-process on a running gateway: no 5xx, and every answer (status, content type, headers, body) as documented."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pluggy
import pytest
from litestar import Litestar

from gateway.runtime import Gateway
from gateway.web.app import create_app
from tests.openapi_fuzz import fuzz_asgi
from tests.registry.test_access import run
from tests.test_runtime import MODEL, virtual_device

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # about 5 s; bounded by examples, not by time


def test_the_api_answers_as_its_openapi_document_says(write_config: Callable[[str], Path], tmp_path: Path,
                                                       plugin_manager: pluggy.PluginManager) -> None:
    data_dir = tmp_path / "data"
    token = run(["token", "create", "--role", "admin", "--data-dir", str(data_dir)]).stdout.strip()
    config = write_config(MODEL + virtual_device("d1") + virtual_device("d2"))
    gateway = Gateway.from_path(config, data_dir, pm=plugin_manager)

    @contextlib.asynccontextmanager
    async def running(app: Litestar) -> AsyncIterator[None]:  # as `fieldgate run` serves it
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    found: list[Any] = fuzz_asgi(create_app(gateway.api, lifespan=[running]), {"Authorization": f"Bearer {token}"})
    assert not found, "\n".join(found)
