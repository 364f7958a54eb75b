"""The upgrade pages against a real registry over TLS: a task started from uploaded wheels for a group, files that
are not wheels refused with a message, stopping a task (nodes not started are cancelled, the one upgrading
finishes), roles and workspaces, the audit log. A real node carrying out a task started from the form, in Chromium:
tests/browser/test_registry_upgrades.py."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import zipfile
from typing import Any

import httpx
import pytest

from tests.registry.conftest import Registry
from tests.registry.test_access import add_user, api, cli, join, token
from tests.registry.test_pages import NODE, Fleet, Session, beat, fleet, session

__all__ = ["fleet"]  # the module's registry, shared by its tests
WHEEL = "fieldgate-9.9.0-py3-none-any.whl"
SPARE = "gw-spare"  # joined, never sends a heartbeat: a task leaves it pending


def wheel_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("gateway/__init__.py", '__version__ = "9.9.0"\n')
    return buffer.getvalue()


def start(pages: Session, files: list[tuple[str, bytes]], **fields: Any) -> httpx.Response:
    """The new-upgrade form posted (multipart) with `files` as its wheels."""
    return pages.client.post("/upgrades", data={"_csrf": pages.csrf, **fields},
                             files=[("wheels", (name, content, "application/octet-stream")) for name, content in files])


def task_of(answer: httpx.Response) -> str:
    assert answer.status_code == 303, answer.text[-600:]
    found = re.fullmatch(r"/upgrades/(up-[0-9a-f]+)", answer.headers["location"])
    assert found, answer.headers["location"]
    return found.group(1)


def flashes(page: httpx.Response, kind: str) -> list[str]:
    return [re.sub(r"\s+", " ", html.unescape(text)).strip()
            for text in re.findall(rf'class="flash {kind}"[^>]*>([^<]*)', page.text)]


def audit(registry: Registry, action: str) -> list[dict[str, Any]]:
    lines = cli(registry, "audit", "--json", "--limit", "400").stdout.splitlines()
    return [entry for entry in map(json.loads, lines) if entry["action"] == action]


@pytest.fixture(scope="module")
def spare(fleet: Fleet) -> str:
    assert join(fleet.registry, token(fleet.registry), fleet.tmp_path / SPARE, "--name", SPARE).returncode == 0
    return SPARE


def test_an_admin_starts_an_upgrade_from_uploaded_wheels_for_a_group(fleet: Fleet) -> None:
    with session(fleet.registry, "admin") as pages:
        form = pages.get("/upgrades/new")
        assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text
        assert 'name="group" value="line-a"' in form.text and f'name="node" value="{NODE}"' in form.text
        assert "<code>4.2.0</code>" in form.text  # the version the nodes run now
        answer = start(pages, [(WHEEL, wheel_bytes())], group="line-a", concurrency="2", max_failures="1",
                       deadline="90")
        task = task_of(answer)
        shown = pages.get(answer.headers["location"])
        assert shown.status_code == 200
        assert flashes(shown, "ok") == [f"Upgrade {task} to version 9.9.0 started on 1 node(s), 2 at a time."]
        assert "version 9.9.0" in shown.text and f'data-node="{NODE}"' in shown.text
        assert 'id="stop-upgrade"' in shown.text and f"<code>{WHEEL}</code>" in shown.text
        listing = pages.get("/upgrades")
        assert f'href="/upgrades/{task}"' in listing.text and 'href="/upgrades/new"' in listing.text
    with api(fleet.registry, cli(fleet.registry, "token", "create", "--role", "viewer").stdout.strip()) as client:
        view = client.get(f"/api/v1/upgrades/{task}").json()
    assert (view["version"], view["concurrency"], view["max_failures"], view["deadline"]) == ("9.9.0", 2, 1, 90)
    assert [n["node"] for n in view["nodes"]] == [NODE] and view["wheels"] == [WHEEL]
    assert view["selector"]["nodes"] == [NODE] and view["created_by"] == "user:admin"
    created = [e for e in audit(fleet.registry, "upgrade.create") if e["object"] == f"upgrade/{task}"]
    assert len(created) == 1 and created[0]["outcome"] == "ok" and created[0]["actor"] == "user:admin"
    detail = json.loads(created[0]["detail"])
    assert detail["targets"] == [NODE] and detail["wheels"] == [WHEEL] and detail["max_failures"] == 1


def test_files_that_are_not_wheels_are_refused_with_a_message(fleet: Fleet) -> None:
    big = b"\0" * (64 * 2**20 + 1)
    cases: list[tuple[list[tuple[str, bytes]], dict[str, str], str]] = [
        ([("notes.txt", b"hello")], {"node": NODE}, "notes.txt: not a wheel's file name"),
        ([("fieldgate.whl", wheel_bytes())], {"node": NODE}, "fieldgate.whl: not a wheel's file name"),
        ([(WHEEL, b"hello, not a zip")], {"node": NODE}, f"{WHEEL}: not a wheel (a wheel is a zip archive"),
        ([(WHEEL, big)], {"node": NODE}, f"{WHEEL}: too big, more than the 64 MiB a wheel may have"),
        ([("fieldgate_modbus-9.9.0-py3-none-any.whl", wheel_bytes())], {"node": NODE}, "no fieldgate wheel"),
        ([(WHEEL, wheel_bytes())], {"node": NODE, "version": "9.9.1"},
         "version 9.9.1: the fieldgate wheel is version 9.9.0"),
        ([(WHEEL, wheel_bytes())], {}, "targets: pick nodes, groups or both"),
        ([(WHEEL, wheel_bytes())], {"node": "nowhere"}, "nodes: no node nowhere in workspace default"),
        ([(WHEEL, wheel_bytes())], {"group": "nothing"}, "groups: no group nothing"),
        ([(WHEEL, wheel_bytes())], {"node": NODE, "concurrency": "0"}, "concurrency: expected a whole number of 1"),
        ([], {"node": NODE}, "wheels: choose the .whl files"),
    ]
    with session(fleet.registry, "admin") as pages:
        before = pages.get("/upgrades").text.count("<tr data-task=")
        for files, fields, message in cases:
            answer = (start(pages, files, **fields) if files else
                      pages.post("/upgrades", {**fields}))
            assert answer.status_code == 303 and answer.headers["location"].startswith("/upgrades/new"), message
            again = pages.get(answer.headers["location"])
            refusals = flashes(again, "error")
            assert len(refusals) == 1 and refusals[0].startswith("Upgrade not started: ") and message in refusals[0], (
                message, refusals)
            for key in ("version", "concurrency"):  # the form comes back as it was filled
                if key in fields:
                    assert re.search(rf'name="{key}"[^>]* value="{fields[key]}"', again.text), (key, fields)
        assert pages.get("/upgrades").text.count("<tr data-task=") == before
    # each refusal is in the audit log with its reason, as the accepted tasks are
    refused = [e for e in audit(fleet.registry, "upgrade.create") if e["outcome"].startswith("refused: ")]
    for files, _, message in cases:
        found = [e for e in refused if message in e["outcome"] and e["actor"] == "user:admin"]
        assert found, (message, [e["outcome"] for e in refused])
        assert found[0]["object"] == "upgrade" and found[0]["scope"] == "workspace:default"
        assert json.loads(found[0]["detail"])["wheels"] == sorted(name for name, _ in files)


def test_refused_uploads_through_the_api_are_audited(fleet: Fleet) -> None:
    good = base64.b64encode(wheel_bytes()).decode()
    admin = cli(fleet.registry, "token", "create", "--role", "admin").stdout.strip()
    cases = [({"../evil.whl": good}, "not a wheel file name: '../evil.whl'"),
             ({WHEEL: "%%not base64"}, "$.wheels: not base64"),
             ({WHEEL: good, "x": good}, "not a wheel file name: 'x'")]
    with api(fleet.registry, admin) as client:
        for wheels, message in cases:
            answer = client.post("/api/v1/upgrades", json={"version": "9.9.0", "wheels": wheels, "nodes": [NODE]})
            assert answer.status_code == 400 and message in answer.json()["detail"], answer.text
    refused = [e for e in audit(fleet.registry, "upgrade.create") if e["actor"].startswith("token:")]
    for wheels, message in cases:
        assert any(message in e["outcome"] and e["outcome"].startswith("refused: ") and
                   json.loads(e["detail"])["wheels"] == sorted(wheels) for e in refused), (message, refused)


def test_stopping_a_task_cancels_the_nodes_not_started_and_lets_the_upgrading_one_finish(fleet: Fleet,
                                                                                          spare: str) -> None:
    node, node_dir = "gw-stop", fleet.tmp_path / "gw-stop"  # a node in no other task
    assert join(fleet.registry, token(fleet.registry), node_dir, "--name", node).returncode == 0
    with session(fleet.registry, "admin") as pages:
        task = task_of(start(pages, [(WHEEL, wheel_bytes())], node=[node, spare], concurrency="1"))
        handed = beat(fleet.registry, node_dir, {})  # healthy now: the task is handed to it
        assert handed["upgrade"]["task"] == task
        beat(fleet.registry, node_dir, {"upgrade": {"task": task, "status": "upgrading"}})
        running = pages.get(f"/upgrades/{task}")
        assert re.search(rf'data-node="{node}" data-phase="running"', running.text)
        assert re.search(rf'data-node="{spare}" data-phase="pending"', running.text)
        stopped = pages.post(f"/upgrades/{task}/stop")
        assert stopped.status_code == 303 and stopped.headers["location"] == f"/upgrades/{task}"
        shown = pages.get(f"/upgrades/{task}")
        assert flashes(shown, "ok") == [f"Upgrade {task} stopped; {node} finish(es) the upgrade under way."]
        assert 'data-status="stopping"' in shown.text
        assert re.search(rf'data-node="{spare}" data-phase="cancelled"', shown.text)
        assert "stopped by user:admin before this node started" in shown.text
        assert re.search(rf'data-node="{node}" data-phase="running"', shown.text)
        beat(fleet.registry, node_dir, {"upgrade": {"task": task, "status": "succeeded",
                                                          "reason": "version 9.9.0 healthy"}})
        done = pages.get(f"/upgrades/{task}")
        assert re.search(rf'data-node="{node}" data-phase="done"', done.text)
        assert 'data-status="stopped"' in done.text and 'id="stop-upgrade"' not in done.text
        assert pages.post(f"/upgrades/{task}/stop").status_code == 303
        assert flashes(pages.get(f"/upgrades/{task}"), "error") == [
            f"upgrade {task}: already stopped, nothing to stop"]
    stops = [e for e in audit(fleet.registry, "upgrade.stop") if e["object"] == f"upgrade/{task}"]
    assert [e["outcome"] for e in stops] == ["ok", f"refused: upgrade {task}: already stopped, nothing to stop"]
    assert json.loads(stops[0]["detail"]) == {"cancelled": [spare], "finishing": [node]}


def test_viewers_and_operators_see_tasks_but_cannot_start_or_stop_them(fleet: Fleet, spare: str) -> None:
    with session(fleet.registry, "admin") as pages:
        task = task_of(start(pages, [(WHEEL, wheel_bytes())], node=spare))
        assert pages.client.post(f"/upgrades/{task}/stop").status_code == 403  # no CSRF token
    for role in ("viewer", "operator"):
        with session(fleet.registry, role) as pages:
            shown = pages.get(f"/upgrades/{task}")
            assert shown.status_code == 200 and f'data-node="{spare}"' in shown.text
            assert 'id="stop-upgrade"' not in shown.text
            assert 'href="/upgrades/new"' not in pages.get("/upgrades").text
            assert pages.get("/upgrades/new").status_code == 403
            refused = start(pages, [(WHEEL, wheel_bytes())], node=spare)
            assert refused.status_code == 403 and f"the {role} role cannot start upgrades; admin can" in refused.text
            stop = pages.post(f"/upgrades/{task}/stop")
            assert stop.status_code == 403 and f"the {role} role cannot stop upgrades; admin can" in stop.text
    with api(fleet.registry, cli(fleet.registry, "token", "create", "--role", "viewer").stdout.strip()) as client:
        assert client.get(f"/api/v1/upgrades/{task}").json()["state"] == "running"
        assert client.post(f"/api/v1/upgrades/{task}/stop").status_code == 403
    # refused at the door (the role), not by the task's checks: nothing for them in the audit log
    assert [e for e in audit(fleet.registry, "upgrade.create") if e["actor"] in ("user:viewer", "user:operator")] == []


def test_an_admin_of_another_workspace_neither_sees_nor_stops_the_task(fleet: Fleet, spare: str) -> None:
    cli(fleet.registry, "workspace", "create", "plant-c", "--folder", "west")
    add_user(fleet.registry, fleet.tmp_path, "west-admin", "--role", "admin", "--scope", "workspace:plant-c")
    with session(fleet.registry, "admin") as pages:
        task = task_of(start(pages, [(WHEEL, wheel_bytes())], node=spare))
    with session(fleet.registry, "west-admin") as pages:
        assert task not in pages.get("/upgrades").text
        assert pages.get(f"/upgrades/{task}").status_code == 404
        assert pages.post(f"/upgrades/{task}/stop").status_code == 404
        refused = pages.get(pages.post("/upgrades", {"node": spare}).headers["location"])
        assert flashes(refused, "error")  # its form offers no workspace but its own, nor the default's nodes
        assert f'value="{spare}"' not in pages.get("/upgrades/new").text
        answer = start(pages, [(WHEEL, wheel_bytes())], node=spare, workspace="default")
        assert "no such workspace" in flashes(pages.get(answer.headers["location"]), "error")[0]
    with api(fleet.registry, cli(fleet.registry, "token", "create", "--role", "viewer").stdout.strip()) as client:
        assert client.get(f"/api/v1/upgrades/{task}").json()["state"] == "running"


def test_the_command_line_stops_a_task(fleet: Fleet, spare: str) -> None:
    with session(fleet.registry, "admin") as pages:
        task = task_of(start(pages, [(WHEEL, wheel_bytes())], node=spare))
    stopped = cli(fleet.registry, "upgrade", "stop", task)
    assert stopped.stdout.startswith(f"upgrade {task}: version 9.9.0, stopped")
    assert re.search(rf"{spare}\s+cancelled\s+stopped by cli:\S+ before this node started", stopped.stdout)
    again = cli(fleet.registry, "upgrade", "stop", task, "--json", check=False)
    assert again.returncode == 2 and again.stderr.strip().endswith(f"upgrade {task}: already stopped, nothing to "
                                                                   "stop")
    missing = cli(fleet.registry, "upgrade", "stop", "up-nothing", check=False)
    assert missing.returncode == 2 and "no upgrade task up-nothing" in missing.stderr
    stops = [e for e in audit(fleet.registry, "upgrade.stop") if e["object"] == f"upgrade/{task}"]
    assert [e["outcome"] for e in stops] == ["ok", f"refused: upgrade {task}: already stopped, nothing to stop"]
    assert all(e["actor"].startswith("cli:") for e in stops)
