"""The console's Routes pages in Chromium against a real registry and a real gateway: an admin makes a REST endpoint,
an HTTP endpoint and a route between them for the node in the forms; the node runs the route, a message posted to
the registry reaches a local HTTP receiver along it, and the route's page shows the node's counter moving."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.test_registry_console import nav, reload_until
from tests.registry.conftest import Registry, wait_until
from tests.registry.test_access import PASSWORD, add_user
from tests.registry.test_messages import api
from tests.registry.test_registry_routes import Node
from tests.registry.test_route_pages import Receiver


def test_an_endpoint_and_a_route_made_in_the_browser_move_their_counter_on_the_node(
        registry: Registry, console: Page, tmp_path: Path, artifacts: Path) -> None:
    page = console
    add_user(registry, tmp_path, "admin", "--role", "admin", "--scope", "platform")
    operator = registry.cli("token", "create", "--role", "operator").stdout.strip()
    receiver = Receiver()
    node = Node(registry, tmp_path)
    try:
        page.goto(registry.url + "/")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", level=1)).to_have_text("Overview")

        nav(page, "Routes")
        page.get_by_role("link", name="Endpoints", exact=True).click()
        page.get_by_role("link", name="New endpoint").click()
        page.get_by_label("Name", exact=True).fill("cloud")
        page.get_by_label("Type", exact=True).fill("rest")
        page.locator('select[name="node"]').select_option("gw-1")
        page.get_by_role("button", name="Save endpoint").click()
        expect(page.locator('[data-endpoint="default/cloud"]')).to_be_visible()

        page.get_by_role("link", name="New endpoint").click()
        page.get_by_label("Name", exact=True).fill("receiver")
        page.get_by_label("Type", exact=True).fill("http")
        page.get_by_label("Properties", exact=True).fill(f"url: {receiver.url}\nmode: each")
        page.get_by_role("button", name="Save endpoint").click()
        expect(page.locator('[data-endpoint="default/receiver"]')).to_be_visible()

        page.get_by_role("link", name="Routes", exact=True).first.click()
        page.get_by_role("link", name="New route").click()
        page.get_by_label("Name", exact=True).fill("down")
        page.get_by_label("Source endpoint").fill("cloud")
        page.get_by_label("Source resource").fill("path=/alarms")
        page.get_by_label("Target endpoint").fill("receiver")
        page.locator('select[name="node"]').select_option("gw-1")
        page.screenshot(path=str(artifacts / "registry-route-form.png"), full_page=True)
        page.get_by_role("button", name="Save route").click()
        expect(page).to_have_url(registry.url + "/routes/default/down")

        wait_until(lambda: "default/down" in node.routes(), what="the route on the node")
        with api(registry, operator) as sender:
            for level in (1, 2):
                posted = sender.post("/api/v1/messages/gw-1/default/alarms", content=f'{{"level": {level}}}'.encode())
                assert posted.status_code == 202, posted.text
                wait_until(lambda n=level: len(receiver.bodies) == n, what=f"message {level} at the receiver")
                delivered = f'#counters tr[data-node="gw-1"] td.delivered:text-is("{level}")'
                reload_until(page, lambda cell=delivered: page.locator(cell), timeout=30)  # the next heartbeat's
        assert receiver.bodies == [b'{"level": 1}', b'{"level": 2}']
        expect(page.locator('#counters tr[data-node="gw-1"] td.failed')).to_have_text("0")
        page.screenshot(path=str(artifacts / "registry-route-counters.png"), full_page=True)
    finally:
        node.close()
        receiver.close()
