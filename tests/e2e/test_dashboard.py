"""The dashboard in a real browser against the real stack: live rows, the channel switch toggle
reaching a real agent's update.conf, and screenshots of every main page (screenshots/, git-ignored)."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from .conftest import SCREENSHOTS, wait_for


@pytest.fixture(autouse=True)
def _sync_django_beside_playwright(monkeypatch):
    # The session-scoped browser (Playwright sync API) keeps an event loop running in this thread,
    # so Django's ORM calls in the stack fixture (bootstrap, flush) would refuse to run.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


def shot(page, name):
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_dashboard_follows_agents_live_and_switches_a_channel(stack, browser_page):
    page = browser_page
    page.goto(stack.url + "/login/")
    shot(page, "login")
    page.fill("input[name=username]", stack.login[0])
    page.fill("input[name=password]", stack.login[1])
    page.click("button[type=submit], form button.btn--primary")
    expect(page).to_have_url(stack.url + "/")

    # Hosts page open, socket connected, then an agent enrolls: its row appears without a reload.
    page.goto(stack.url + "/hosts/")
    expect(page.locator("[data-live-state]")).to_have_attribute("data-live-state", "open", timeout=60_000)
    page.evaluate("window.__sameDocument = true")
    agent = stack.spawn_agent("e2e-dash-1")
    row = page.locator(f'#host-table tr[data-host="{agent.host_id}"]')
    expect(row).to_be_visible(timeout=120_000)
    expect(row).to_contain_text("online", timeout=120_000)
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    shot(page, "hosts")

    # Group page: click "beta" on the toggle; the agent rewrites update.conf and acknowledges.
    group = next(g for g in stack.api.get("/api/v1/groups/").json()["results"] if g["id"])
    page.goto(f"{stack.url}/groups/{group['id']}/")
    expect(page.locator("[data-live-state]")).to_have_attribute("data-live-state", "open", timeout=60_000)
    page.evaluate("window.__sameDocument = true")
    page.click('#group-policy button[data-channel="beta"]')
    expect(page.locator('#group-policy button[data-channel="beta"]')).to_have_class(re.compile(r"\bis-active\b"))
    wait_for(lambda: "GROUP=beta" in agent.update_conf(), timeout=60, what="GROUP=beta in the agent's update.conf")
    host_row = page.locator(f'#group-hosts tr[data-host="{agent.host_id}"]')
    expect(host_row.locator("[data-policy]")).to_contain_text("applied", timeout=60_000)
    expect(host_row).to_contain_text("beta", timeout=60_000)
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    shot(page, "group")

    # The rest of the main pages, for the record.
    for name, path in [("overview", "/"), ("host", f"/hosts/{agent.host_id}/"), ("groups", "/groups/"),
                       ("activity", "/activity/")]:
        page.goto(stack.url + path)
        expect(page.locator("main")).to_be_visible()
        shot(page, name)
    expect(page.locator("#activity")).to_contain_text("switched from stable to beta")

    page.goto(stack.url + "/tokens/")
    page.select_option("select[name=group]", str(group["id"]))
    page.fill("input[name=name]", "rack 7")
    page.click("form[action='/tokens/'] button.btn--primary")
    expect(page.locator("#register-command")).to_contain_text(f"agent register --server {stack.url} --token fwe_")
    shot(page, "tokens")
