"""schemathesis against the registry's API as its OpenAPI document describes it, with an admin API token, the app
in-process on a temp data dir: no 5xx, and every answer (status, content type, headers, body) as documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.registry.app import create_app
from tests.openapi_fuzz import fuzz_asgi
from tests.registry.test_access import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]  # about 10 s; bounded by examples, not by time


def test_the_api_answers_as_its_openapi_document_says(tmp_path: Path) -> None:
    data_dir = tmp_path / "registry"
    app = create_app(data_dir)
    token = run(["registry", "token", "create", "--role", "admin", "--scope", "platform", "--data-dir",
                 str(data_dir)]).stdout.strip()
    found = fuzz_asgi(app, {"Authorization": f"Bearer {token}"})
    assert not found, "\n".join(found)
