"""Updates in a real browser against the real stack (ASGI server, Redis, a Celery worker, a real
agent on a disk image): upload a release through the form, publish it to stable on the channels
board, and follow the rollout page live until the host has flipped to the new USR partition.
Screenshots go to screenshots/ (git-ignored)."""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from playwright.sync_api import expect

from .conftest import BIN, ROOT, SCREENSHOTS, stop_process, wait_for


@pytest.fixture(autouse=True)
def _sync_django_beside_playwright(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def worker(stack):
    """A Celery worker on the stack's Redis, so rollout waves advance as in production."""
    proc = subprocess.Popen([BIN / "celery", "-A", "fleetweb", "worker", "--pool", "solo", "--loglevel", "info",
                             "--without-heartbeat", "--without-gossip", "--without-mingle"],
                            cwd=ROOT, env=stack.env, stdout=open(stack.workdir / "worker.log", "ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop_process(proc)


def shot(page, name):
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def payload(tmp_path, version):
    out = tmp_path / f"usr-{version}.img"
    res = subprocess.run([BIN / "imagebuilder", "payload", "--version", version, "--output", str(out),
                          "--size-mib", "8", "--json"], capture_output=True, text=True, check=True,
                         env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    return out, json.loads(res.stdout)


def test_a_release_uploaded_and_published_in_the_browser_rolls_out_live(stack, worker, browser_page, tmp_path):
    page = browser_page
    agent = stack.spawn_agent("e2e-upd-1")
    wait_for(lambda: stack.host(agent.host_id)["online"], timeout=120, what="the agent online")
    image, meta = payload(tmp_path, "200.0.0")

    page.goto(stack.url + "/login/")
    page.fill("input[name=username]", stack.login[0])
    page.fill("input[name=password]", stack.login[1])
    page.click("form button.btn--primary")
    expect(page).to_have_url(stack.url + "/")

    # A wrong declared hash is refused in the form, and nothing is listed.
    page.goto(stack.url + "/releases/")
    page.fill("input[name=version]", "200.0.0")
    page.set_input_files("input[name=payload]", str(image))
    page.fill("input[name=sha256]", hashlib.sha256(b"something else").hexdigest())
    page.click("#release-upload button.btn--primary")
    expect(page.locator("#release-upload .field--error")).to_contain_text("does not match the payload")
    expect(page.locator("#release-table")).not_to_contain_text("200.0.0")
    shot(page, "release-upload-error")

    # The right one is stored, signed, and shown.
    page.fill("input[name=version]", "200.0.0")
    page.set_input_files("input[name=payload]", str(image))
    page.fill("input[name=sha256]", meta["sha256"])
    page.click("#release-upload button.btn--primary")
    expect(page.locator("h1")).to_contain_text("200.0.0")
    expect(page.locator("main")).to_contain_text(meta["sha256"])
    shot(page, "release")

    # Publish to stable on the channels board: the rollout to the group starts.
    page.goto(stack.url + "/channels/")
    expect(page.locator("[data-live-state]")).to_have_attribute("data-live-state", "open", timeout=60_000)
    actions = page.locator("#channel-stable-actions")
    actions.locator("select[name=release]").select_option(label="200.0.0")
    actions.locator('button[data-publish="stable"]').click()
    expect(page.locator('#channel-stable [data-current="200.0.0"]')).to_be_visible()
    link = page.locator("#channels .alert--green a").first
    expect(link).to_contain_text("web")
    shot(page, "channels")

    # The rollout page appears with its counts and follows the host live to the end.
    link.click()
    expect(page.locator("h1")).to_contain_text("Rollout #")
    expect(page.locator('#rollout-counts [data-state="total"] .state-n')).to_have_text("1")
    expect(page.locator("[data-live-state]")).to_have_attribute("data-live-state", "open", timeout=60_000)
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("#rollout")).to_have_attribute("data-status", "completed", timeout=300_000)
    expect(page.locator('#rollout-counts [data-state="succeeded"] .state-n')).to_have_text("1")
    expect(page.locator(f'#rollout-hosts tr[data-host="{agent.host_id}"]')).to_contain_text("Updated")
    assert page.evaluate("window.__sameDocument") is True, "the page was reloaded"
    shot(page, "rollout")

    page.goto(f"{stack.url}/hosts/{agent.host_id}/")
    # The host page follows the agent live: its reported state and queued events arrive after the
    # reconnect, so wait for them rather than for a fixed time.
    timeline = page.locator("#host-update-timeline")
    expect(timeline).to_contain_text("Rebooted into new version", timeout=60_000)
    expect(timeline).to_contain_text("Update installed", timeout=60_000)
    expect(page.locator("#host-detail .headline")).to_contain_text("200.0.0", timeout=60_000)
    expect(timeline.locator(".ab-part--active")).to_contain_text("200.0.0", timeout=60_000)
    expect(timeline.locator(".flip").last).to_contain_text("→")
    shot(page, "host-updated")

    for name, path in [("releases", "/releases/"), ("rollouts", "/rollouts/"),
                       ("group-rollout-policy", f"/groups/{stack.host(agent.host_id)['group']}/")]:
        page.goto(stack.url + path)
        expect(page.locator("main")).to_be_visible()
        shot(page, name)
