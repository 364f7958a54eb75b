"""The registry's Files page: an operator pushes a file to a node from the page (multipart, with the session's CSRF
token), sees each node's progress, downloads it and deletes it; a viewer sees but cannot push; each change is in the
audit log."""

from __future__ import annotations

import hashlib
import re

from tests.registry.test_access import cli
from tests.registry.test_pages import NODE, Fleet, fleet, session

__all__ = ["fleet"]


def test_an_operator_pushes_a_file_from_the_page_and_follows_it(fleet: Fleet) -> None:
    body = b"recipe v7\n" * 1000
    with session(fleet.registry, "viewer") as viewer:
        page = viewer.get("/files")
        assert page.status_code == 200 and 'id="push-file"' not in page.text
        refused = viewer.client.post("/files", data={"_csrf": viewer.csrf, "node": NODE},
                                     files={"file": ("recipe.txt", body, "text/plain")})
        assert refused.status_code == 403
    with session(fleet.registry, "operator") as operator:
        page = operator.get("/files")
        assert 'id="push-file"' in page.text and f'value="{NODE}"' in page.text
        # without the session's CSRF token the upload is refused
        assert operator.client.post("/files", data={"node": NODE},
                                    files={"file": ("recipe.txt", body, "text/plain")}).status_code == 403
        pushed = operator.client.post("/files", data={"_csrf": operator.csrf, "node": NODE, "path": "recipes"},
                                      files={"file": ("recipe.txt", body, "text/plain")})
        assert pushed.status_code == 303, pushed.text[-500:]
        location = pushed.headers["location"]
        file_id = location.rsplit("/", 1)[1]
        shown = operator.get(location)
        assert shown.status_code == 200
        assert re.search(rf'data-node="{NODE}".*?data-status="pending"', shown.text, re.S)
        assert hashlib.sha256(body).hexdigest() in shown.text
        download = operator.get(f"/files/{file_id}/download")
        assert download.content == body and download.headers["x-content-sha256"] == hashlib.sha256(body).hexdigest()
        bad = operator.client.post("/files", data={"_csrf": operator.csrf, "node": NODE, "path": "../up"},
                                   files={"file": ("recipe.txt", body, "text/plain")})
        flashed = operator.get(bad.headers["location"]).text
        assert "File not pushed: path" in flashed and "&#39;..&#39; is not allowed" in flashed
        assert operator.post(f"/files/{file_id}/delete").status_code == 303
        assert operator.get(location).status_code == 404
    audit = cli(fleet.registry, "audit", "--limit", "50").stdout
    pushes = [line for line in audit.splitlines() if "file.push" in line and f"file/{file_id}" in line]
    deletes = [line for line in audit.splitlines() if "file.delete" in line and f"file/{file_id}" in line]
    assert len(pushes) == 1 and "user:operator" in pushes[0] and len(deletes) == 1
