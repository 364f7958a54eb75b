"""Administration in Chromium against a real registry: an admin adds a user with a role and a scope on the Users
page, and that user, logged in in a browser context of its own, meets the role's limits (no administration in the
navigation, no admin buttons, a 403 page for an admin page)."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.registry.conftest import Registry
from tests.registry.test_access import add_user, cli

PASSWORD = "registry-pass-1"  # the one add_user gives
NEW_PASSWORD = "operator-pass-1"


def new_page(chromium: Browser) -> Page:
    context = chromium.new_context(viewport={"width": 1280, "height": 900}, ignore_https_errors=True)
    page = context.new_page()
    page.set_default_timeout(10_000)
    return page


def log_in(page: Page, url: str, user: str, password: str) -> None:
    page.goto(url + "/")
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Overview")


def test_an_admin_adds_a_user_who_then_meets_the_role_limits(registry: Registry, chromium: Browser, tmp_path: Path,
                                                               artifacts: Path) -> None:
    cli(registry, "workspace", "create", "east", "--folder", "plant")
    add_user(registry, tmp_path, "root", "--role", "admin", "--scope", "platform")
    admin = new_page(chromium)
    try:
        log_in(admin, registry.url, "root", PASSWORD)
        admin.get_by_role("link", name="Administration").click()
        expect(admin.get_by_role("heading", level=1)).to_contain_text("Users")
        form = admin.locator("#add-user")
        # least privilege: the lowest role is picked, and each role says what it may do
        expect(form.locator('input[name="role"][value="viewer"]')).to_be_checked()
        expect(form.get_by_text("sets desired values")).to_be_visible()
        form.get_by_label("Name", exact=True).fill("olga")
        form.locator('input[name="role"][value="operator"]').check()
        form.locator('select[name="scope"]').select_option("workspace:east")
        form.get_by_label("Initial password").fill(NEW_PASSWORD)
        form.get_by_role("button", name="Add user").click()
        expect(admin.locator(".flash.ok")).to_have_text("User olga added as operator in workspace:east.")
        row = admin.locator('tr[data-user="olga"]')
        expect(row).to_contain_text("operator")
        expect(row).to_contain_text("workspace:east")
        admin.screenshot(path=str(artifacts / "registry-admin-users.png"), full_page=True)
    finally:
        admin.context.close()

    olga = new_page(chromium)
    try:
        log_in(olga, registry.url, "olga", NEW_PASSWORD)
        expect(olga.locator(".who")).to_contain_text("operator, workspace:east")
        nav = olga.locator("header nav")
        expect(nav.get_by_role("link", name="Nodes")).to_be_visible()
        expect(nav.get_by_role("link", name="Administration")).to_have_count(0)
        expect(nav.get_by_role("link", name="Audit log")).to_have_count(0)
        olga.goto(registry.url + "/groups")
        expect(olga.get_by_role("link", name="New group")).to_have_count(0)
        olga.screenshot(path=str(artifacts / "registry-admin-operator-groups.png"), full_page=True)
        answer = olga.goto(registry.url + "/users")
        assert answer is not None and answer.status == 403
        expect(olga.locator("main")).to_contain_text("the operator role cannot see this page")
        olga.screenshot(path=str(artifacts / "registry-admin-operator-refused.png"), full_page=True)
    finally:
        olga.context.close()
    assert '"object": "user/olga"' in cli(registry, "audit", "--json").stdout
