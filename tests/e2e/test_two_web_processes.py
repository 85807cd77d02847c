"""Two web processes behind the same Redis act as one (issue 10 §2): a change made through one
reaches agents and dashboard pages connected to the other."""
from __future__ import annotations

import asyncio
import json
import re
import subprocess

import httpx
import pytest
import websockets

from tests.conftest import PASSWORD

from .conftest import BIN, ROOT, free_port, stop_process, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def second_server(stack):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [BIN / "uvicorn", "fleetweb.asgi:application", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"],
        cwd=ROOT, env={**stack.env, "FLEET_ALLOWED_HOSTS": "127.0.0.1,localhost"},
        stdout=open(stack.workdir / "server-2.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is None and httpx.get(f"{url}/healthz", timeout=1).status_code == 200,
                 timeout=60, what=f"the second web process on {url}")
        yield url
    finally:
        stop_process(proc)


def session_cookie(url: str) -> str:
    with httpx.Client(base_url=url, timeout=30) as client:
        page = client.get("/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        answer = client.post("/login/", data={"username": "alice", "password": PASSWORD,
                                              "csrfmiddlewaretoken": token}, headers={"Referer": f"{url}/login/"})
        assert answer.status_code in (200, 302), answer.text[:500]
        assert "sessionid" in client.cookies, "login failed"
        return f"sessionid={client.cookies['sessionid']}"


def test_a_change_made_on_one_process_reaches_a_dashboard_page_on_the_other(stack, second_server):
    cookie = session_cookie(second_server)
    group_id = stack.api.get("/api/v1/groups/").json()["results"][0]["id"]

    async def scenario():
        ws_url = second_server.replace("http://", "ws://") + "/ws/ui/"
        async with websockets.connect(ws_url, additional_headers={"Cookie": cookie, "Origin": second_server},
                                      open_timeout=30) as page:
            answer = await asyncio.to_thread(stack.api.patch, f"/api/v1/groups/{group_id}/", json={"channel": "beta"})
            assert answer.status_code == 200, answer.text
            while True:
                notice = json.loads(await asyncio.wait_for(page.recv(), timeout=60))
                if any(c.get("kind") == "group" or c.get("group") == group_id for c in notice["changes"]):
                    return notice

    notice = asyncio.run(scenario())
    assert notice["type"] == "changes"


def test_a_channel_switch_reaches_agents_on_both_processes(stack, second_server):
    first = stack.spawn_agent("host-a")
    other = stack.new_agent("host-b")
    other.server = second_server
    assert other.register().returncode == 0
    other.start()
    hosts = lambda: stack.api.get("/api/v1/hosts/").json()["results"]  # noqa: E731
    wait_for(lambda: len(hosts()) == 2 and all(h["online"] for h in hosts()), timeout=90, what="both agents online")
    group_id = hosts()[0]["group"]
    answer = stack.api.patch(f"/api/v1/groups/{group_id}/", json={"channel": "beta"})
    assert answer.status_code == 200, answer.text
    wait_for(lambda: all(h["policy_applied"] for h in hosts()), timeout=90,
             what="both agents acknowledging the switch")
    for agent in (first, other):
        wait_for(lambda a=agent: "GROUP=beta" in a.update_conf(), timeout=60, what=f"{agent.name}'s update.conf")
