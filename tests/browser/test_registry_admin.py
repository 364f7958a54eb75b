"""Administration in Chromium against a real registry: an admin adds a user with a role and a scope on the Users
page, and that user, logged in in a browser context of its own, meets the role's limits (no administration in the
navigation, no admin buttons, a 403 page for an admin page); an admin makes a custom role on the Roles page, grants
it at a workspace (the picker offers it first, marked least privilege, with its permissions), and its holder sees
only the pages and actions its permissions allow."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from gateway.registry.permissions import OPERATOR
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


def test_an_admin_makes_a_custom_role_and_its_holder_sees_exactly_what_it_allows(
        registry: Registry, chromium: Browser, tmp_path: Path, artifacts: Path) -> None:
    from tests.registry.test_access import join, token
    from tests.registry.test_pages import DOCUMENTS, NODE, TWINS, beat

    assert join(registry, token(registry), tmp_path / NODE, "--name", NODE).returncode == 0
    (tmp_path / "docs.yaml").write_text(DOCUMENTS)
    cli(registry, "apply", "-f", str(tmp_path / "docs.yaml"))
    beat(registry, tmp_path / NODE, TWINS)
    cli(registry, "workspace", "create", "east", "--folder", "plant")
    add_user(registry, tmp_path, "root", "--role", "admin", "--scope", "platform")
    admin = new_page(chromium)
    try:
        log_in(admin, registry.url, "root", PASSWORD)
        admin.get_by_role("link", name="Administration").click()
        admin.locator(".admin-tabs").get_by_role("link", name="Roles").click()
        expect(admin.get_by_role("heading", level=1)).to_contain_text("Roles")
        # the built-in roles are read-only: a copy is where a custom role starts
        expect(admin.locator('tr[data-role="viewer"]')).to_contain_text("Duplicate as custom role")
        admin.get_by_role("link", name="New role").click()
        form = admin.locator("#role-form")
        form.get_by_label("Name").fill("device-hands")
        form.get_by_label("Description").fill("reads devices and sets desired values")
        form.locator('input[name="perm-devices.read"]').check()
        form.locator('input[name="perm-devices.write"]').check()
        form.get_by_role("button", name="Create role").click()
        expect(admin.locator(".flash.ok")).to_have_text("Role device-hands created with 2 permissions.")
        column = admin.locator('#roles-matrix td[data-role="device-hands"]', has_text="✓")
        expect(column).to_have_count(2)
        admin.screenshot(path=str(artifacts / "registry-admin-roles.png"), full_page=True)

        admin.locator(".admin-tabs").get_by_role("link", name="Users").click()
        add = admin.locator("#add-user")
        # least privilege: the smallest role comes first, is picked and marked, and lists exactly its permissions
        hands = add.locator('label[data-role="device-hands"]')
        expect(add.locator("label.role-choice").first).to_have_attribute("data-role", "device-hands")
        expect(hands.locator('input[name="role"]')).to_be_checked()
        expect(hands.locator("[data-least-privilege]")).to_have_text("least privilege")
        expect(hands.locator("[data-permission]")).to_have_text(["devices.read", "devices.write"])
        expect(add.locator('label[data-role="operator"] [data-permission]')).to_have_count(len(OPERATOR))
        # what the person needs picks the least privileged role that covers it
        add.get_by_text("Pick by what it needs").click()
        add.locator('input[data-need][value="apps.operate"]').check()
        expect(add.locator('label[data-role="operator"] input[name="role"]')).to_be_checked()
        expect(add.locator("[data-covering]")).to_contain_text("Picked operator")
        add.locator('input[data-need][value="apps.operate"]').uncheck()
        add.locator('input[data-need][value="devices.write"]').check()
        expect(hands.locator('input[name="role"]')).to_be_checked()
        expect(add.locator("[data-covering]")).to_contain_text("Picked device-hands")
        admin.screenshot(path=str(artifacts / "registry-admin-role-picker.png"), full_page=True)
        add.get_by_label("Name", exact=True).fill("hana")
        add.locator('select[name="scope"]').select_option("workspace:default")
        add.get_by_label("Initial password").fill(NEW_PASSWORD)
        add.get_by_role("button", name="Add user").click()
        expect(admin.locator(".flash.ok")).to_have_text("User hana added as device-hands in workspace:default.")
        expect(admin.locator('tr[data-user="hana"]')).to_contain_text("device-hands")
        admin.screenshot(path=str(artifacts / "registry-admin-custom-role.png"), full_page=True)
    finally:
        admin.context.close()

    hana = new_page(chromium)
    try:
        log_in(hana, registry.url, "hana", NEW_PASSWORD)
        expect(hana.locator(".who")).to_contain_text("device-hands, workspace:default")
        expect(hana.locator("header nav a")).to_have_text(["Overview", "Devices"])
        hana.locator("header nav").get_by_role("link", name="Devices").click()
        hana.get_by_role("link", name="default/boiler-1").click()
        expect(hana.get_by_role("link", name="Edit", exact=True)).to_have_count(0)
        hana.get_by_label("desired setpoint").fill("23.5")
        hana.locator('form.set-desired:has(input[value="setpoint"])').get_by_role("button", name="Set").click()
        expect(hana.locator(".flash.ok")).to_contain_text("Desired setpoint=23.5 set for default/boiler-1")
        hana.screenshot(path=str(artifacts / "registry-custom-role-device.png"), full_page=True)
        for path in ("/apps", "/users", "/nodes"):
            answer = hana.goto(registry.url + path)
            assert answer is not None and answer.status == 403, path
        expect(hana.locator("main")).to_contain_text("the device-hands role cannot see this page")
        hana.screenshot(path=str(artifacts / "registry-custom-role-refused.png"), full_page=True)
    finally:
        hana.context.close()
    audit = cli(registry, "audit", "--json").stdout
    assert '"action": "role.create"' in audit and '"object": "user/hana"' in audit
