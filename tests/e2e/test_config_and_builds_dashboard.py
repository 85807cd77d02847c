"""The cloud-config editor and the build page in a real browser against the real stack (ASGI server,
Redis, a Celery worker running imagebuilder): validation as you type (htmx on keyup) that keeps an
invalid document from being saved, and a build log streamed over /ws/ui/ without a reload.
Screenshots go to screenshots/ (git-ignored)."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import SCREENSHOTS


@pytest.fixture(autouse=True)
def _sync_django_beside_playwright(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def shot(page, name):
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


def log_in(page, stack):
    page.goto(stack.url + "/login/")
    page.fill("input[name=username]", stack.login[0])
    page.fill("input[name=password]", stack.login[1])
    page.click("form button.btn--primary")
    expect(page).to_have_url(stack.url + "/")


def mark_document(page):
    """A marker in this document: gone if the page is reloaded or navigated away."""
    page.evaluate("window.__sameDocument = true")
    return page.evaluate("performance.getEntriesByType('navigation').length")


def assert_same_document(page, navigations):
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"
    assert page.evaluate("performance.getEntriesByType('navigation').length") == navigations


# Line 4: `false` is no reboot strategy; line 6: /usr is read-only on CoreOS.
INVALID = """#cloud-config
coreos:
  update:
    reboot_strategy: false
write_files:
  - path: /usr/x
    content: hello
"""


def test_cloud_config_editor_validates_as_you_type_and_refuses_to_save_errors(stack, browser_page):
    page = browser_page
    group = next(g for g in stack.api.get("/api/v1/groups/").json()["results"] if g["name"] == "web")
    api_doc = f"/api/v1/groups/{group['id']}/cloud-config"
    assert stack.api.get(api_doc).json()["revision"] == 0

    log_in(page, stack)
    editor_url = f"{stack.url}/cloud-config/groups/{group['id']}/"
    page.goto(editor_url)
    area = page.locator("#cc-content")
    report = page.locator("#cc-report")
    expect(report).to_have_attribute("data-valid", "true")   # the default "#cloud-config" document

    # Type the document (keyup events, as a user would); htmx validates after the 400 ms pause.
    navigations = mark_document(page)
    area.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    area.press_sequentially(INVALID)
    expect(area).to_have_value(INVALID)
    expect(report).to_have_attribute("data-valid", "false")
    expect(report).to_contain_text("Errors: this document cannot be saved")
    line4 = report.locator('li.cc-entry[data-line="4"][data-kind="error"]')
    line6 = report.locator('li.cc-entry[data-line="6"][data-kind="error"]')
    expect(line4).to_contain_text(re.compile(r"line 4\s+invalid value false"))
    expect(line6).to_contain_text(re.compile(r"line 6\s+file /usr/x is under /usr"))
    expect(report.locator('li.cc-entry[data-kind="error"]')).to_have_count(2)
    # Validated in place: nothing submitted, no navigation.
    assert page.url == editor_url
    assert_same_document(page, navigations)
    assert stack.api.get(api_doc).json()["revision"] == 0
    shot(page, "cloudconfig-editor-errors.png")

    # Saving is refused: the text as typed comes back with its errors, and no revision exists.
    page.click("#cc-form button[type=submit]")
    expect(page.locator(".alert--red[role=alert]")).to_contain_text("Not saved: the document has errors")
    expect(area).to_have_value(INVALID)
    expect(report).to_have_attribute("data-valid", "false")
    expect(line4).to_contain_text("invalid value false")
    expect(line6).to_contain_text("/usr/x")
    doc = stack.api.get(api_doc).json()
    assert doc["revision"] == 0 and doc["revision_id"] is None, doc
    assert stack.api.get(f"{api_doc}/revisions").json() == []

    # Fix it line by line: a click on an entry selects its line in the text; typing replaces it.
    navigations = mark_document(page)
    line4.click()
    page.keyboard.type('    reboot_strategy: "off"')
    expect(report.locator("li.cc-entry[data-kind=error]")).to_have_count(1)
    expect(line6).to_be_visible()
    line6.click()
    page.keyboard.type("  - path: /etc/x")
    valid = INVALID.replace("reboot_strategy: false", 'reboot_strategy: "off"').replace("/usr/x", "/etc/x")
    expect(area).to_have_value(valid)
    expect(report).to_have_attribute("data-valid", "true")
    expect(report).to_contain_text("✓ valid")
    expect(report.locator("li.cc-entry[data-kind=error]")).to_have_count(0)
    assert_same_document(page, navigations)
    assert stack.api.get(api_doc).json()["revision"] == 0

    # Now it saves, as revision 1.
    page.click("#cc-form button[type=submit]")
    expect(page.locator(".alert--green[role=status]")).to_contain_text("Saved as r1")
    expect(page.locator("h1")).to_contain_text("r1")
    doc = stack.api.get(api_doc).json()
    assert doc["revision"] == 1 and doc["content"] == valid and doc["author"], doc
    assert [r["number"] for r in stack.api.get(f"{api_doc}/revisions").json()] == [1]
    shot(page, "cloudconfig-editor.png")


def test_a_build_started_in_the_browser_streams_its_log_live(stack, browser_page):
    page = browser_page
    log_in(page, stack)

    page.goto(stack.url + "/builds/")
    form = page.locator("#build-new form")
    form.locator("input[name=version]").fill("300.0.0")
    form.locator("select[name=channel]").select_option("alpha")
    for box in form.locator("input[name=platforms]").all():   # all platforms are ticked by default
        box.set_checked(box.get_attribute("value") == "qemu")
    expect(form.locator("input[name=platforms]:checked")).to_have_count(1)
    form.locator("button.btn--primary").click()
    expect(page).to_have_url(re.compile(re.escape(stack.url) + r"/builds/\d+/$"))
    build_id = int(page.url.rstrip("/").rsplit("/", 1)[1])
    build = stack.api.get(f"/api/v1/builds/{build_id}/").json()
    assert (build["version"], build["channel"], build["status"]) == ("300.0.0", "alpha", "queued"), build

    # The page is open, its sockets connected, the log empty: only then does a worker pick the build
    # up, so every line shown below arrived over /ws/ui/ (not with the page's first HTML).
    log = page.locator("pre[data-build-log]")
    expect(page.locator("[data-live-state]")).to_have_attribute("data-live-state", "open", timeout=60_000)
    expect(page.locator("#build")).to_have_attribute("data-status", "queued")
    expect(page.locator("#build [data-progress]")).to_have_attribute("data-progress", "0")
    assert log.text_content() == ""
    navigations = mark_document(page)
    stack.start_worker()

    expect(log).to_contain_text("== qemu: disk variant (OEM ID=qemu)", timeout=300_000)
    expect(log).to_contain_text(re.compile(r"^\$ \S*qemu-img convert -q -f raw -O qcow2", re.M))
    expect(page.locator("#build")).to_have_attribute("data-status", "succeeded", timeout=600_000)
    expect(page.locator("#build [data-build-status]")).to_contain_text(re.compile("succeeded", re.I))
    expect(page.locator("#build [data-progress]")).to_have_attribute("data-progress", "100")
    expect(page.locator("#build [role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    qcow2 = page.locator('#build table[data-artifacts] tr[data-artifact$="qemu_image.qcow2"]')
    expect(qcow2).to_have_count(1)
    expect(qcow2).to_contain_text("qemu")
    expect(log).to_contain_text("qemu: 4 artifacts in")
    assert_same_document(page, navigations)

    # The streamed log is the build's log: same lines, in file order, none twice.
    shown = log.text_content()
    stored = stack.api.get(f"/api/v1/builds/{build_id}/log").text
    assert shown.strip() and stored.startswith(shown.rstrip("\n")), (shown[-500:], stored[-500:])
    assert shown.count("== qemu: disk variant") == 1
    artifacts = stack.api.get(f"/api/v1/builds/{build_id}/").json()["artifacts"]
    assert any(a["name"].endswith("qemu_image.qcow2") for a in artifacts)
    shot(page, "build.png")
