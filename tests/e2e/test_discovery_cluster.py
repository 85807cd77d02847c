"""A real 3-member etcd cluster bootstraps itself through our discovery URL (served by the real
ASGI server), and a fourth member is refused because the cluster is full (issue 6 §7)."""
from __future__ import annotations

import json
import subprocess
import urllib.request

import httpx
import pytest

from tests.e2e.conftest import free_port, stop_process, wait_for


def start_member(name: str, url: str, workdir, *extra: str):
    peer, client = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    log = workdir / f"{name}.log"
    proc = subprocess.Popen(
        ["etcd", "--name", name, "--data-dir", str(workdir / name), "--listen-peer-urls", peer,
         "--initial-advertise-peer-urls", peer, "--listen-client-urls", client, "--advertise-client-urls", client,
         "--discovery", url, "--logger", "zap", "--log-outputs", "stderr", *extra],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    return proc, client, peer, log


def KEY(stack) -> dict:  # noqa: N802
    return {"Authorization": f"Bearer {stack.bootstrap['api_key']}"}


def healthy(client: str) -> bool:
    with urllib.request.urlopen(client + "/health", timeout=1) as resp:
        return json.loads(resp.read()).get("health") == "true"


@pytest.mark.parametrize("slash", ["", "/"], ids=["url", "url-with-a-trailing-slash"])
def test_it_bootstraps_a_three_member_cluster_and_refuses_a_fourth(stack, slash):
    """With a trailing slash too (``--discovery http://.../discovery/<token>/``, as discovery.etcd.io
    serves it): etcd's client keeps the slash when it lists and watches the members, and exited with
    "response is invalid json" when that answered an HTML 404."""
    # As a provisioning script would do it (curl -H "Authorization: Bearer $KEY" .../discovery/new?size=3);
    # anonymous creation is off by default (issue 9 §4).
    r = httpx.get(f"{stack.url}/discovery/new?size=3", headers=KEY(stack), timeout=30)
    assert r.status_code == 200, r.text
    assert r.text.startswith(f"{stack.url}/discovery/") and len(r.text.strip().rsplit("/", 1)[1]) == 32
    url = r.text.strip() + slash

    procs = []
    try:
        members = [start_member(f"m{i}", url, stack.workdir) for i in (1, 2, 3)]
        procs += [m[0] for m in members]
        for proc, client, _, log in members:
            wait_for(lambda proc=proc, client=client: proc.poll() is None and healthy(client), timeout=120,
                     what=f"etcd member {client} healthy (log {log}: {log.read_text()[-1500:] if log.exists() else ''})")

        # One cluster of three, formed from the registrations: every member sees the same three peers.
        listed = subprocess.run(["etcdctl", "--endpoints", members[0][1], "member", "list", "-w", "json"],
                                capture_output=True, text=True, timeout=60, check=True)
        peers = sorted(u for m in json.loads(listed.stdout)["members"] for u in m["peerURLs"])
        assert peers == sorted(m[2] for m in members)
        put = subprocess.run(["etcdctl", "--endpoints", members[0][1], "put", "probe", "ok"], capture_output=True,
                             text=True, timeout=60)
        assert put.returncode == 0, put.stderr
        got = subprocess.run(["etcdctl", "--endpoints", members[2][1], "get", "probe", "--print-value-only"],
                             capture_output=True, text=True, timeout=60)
        assert got.stdout.strip() == "ok"

        # The token URL lists the three members as etcd's own client reads them.
        body = httpx.get(url, timeout=30).json()
        values = sorted(n["value"] for n in body["node"]["nodes"] if not n.get("dir"))
        assert values == sorted(f"m{i}={members[i - 1][2]}" for i in (1, 2, 3))

        # A fourth member is refused: etcd's discovery client reports the cluster full and exits.
        proc4, _, _, log4 = start_member("m4", url, stack.workdir, "--discovery-fallback", "exit")
        procs.append(proc4)
        try:
            code = proc4.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the fourth member did not exit: {log4.read_text()[-2000:]}")
        assert code != 0
        assert "discovery: cluster is full" in log4.read_text()
        assert len(httpx.get(url, timeout=30).json()["node"]["nodes"]) == 3  # three members (_config is hidden)
    finally:
        for proc in procs:
            stop_process(proc)


@pytest.fixture
def one_watch_per_token(monkeypatch):
    """The stack's server holds one watch per token: a second one is refused (429) while the first is
    open, which tells the test from outside that the server holds it."""
    monkeypatch.setenv("FLEET_DISCOVERY_WATCHES_PER_TOKEN", "1")


def test_an_open_discovery_watch_does_not_hold_other_requests(one_watch_per_token, stack):
    """The watch is a long poll (up to 50 s). It once ran inside the shared sync thread (a sync-only
    middleware kept the whole chain sync), so every other request waited for it to end: etcd's
    members, which give each request 5 s, failed to bootstrap whenever one of them started waiting
    before the others had registered."""
    import threading

    url = httpx.get(f"{stack.url}/discovery/new?size=3", headers=KEY(stack), timeout=30).text.strip()
    assert httpx.put(f"{url}/aaa1?prevExist=false", data={"value": "m1=http://127.0.0.1:1"},
                     timeout=30).status_code == 201
    watched = {}

    def watch():
        while True:  # refused only while a probe below held the token's one slot: ask again
            watched["answer"] = httpx.get(url, params={"wait": "true", "recursive": "true", "waitIndex": "3"},
                                          timeout=70)
            if watched["answer"].status_code != 429:
                return

    def watch_is_held() -> bool:
        # Without the watch this probe takes the slot and answers at once (aaa1 is index 2): 200.
        probe = httpx.get(url, params={"wait": "true", "recursive": "true", "waitIndex": "2"}, timeout=30)
        return probe.status_code == 429

    waiter = threading.Thread(target=watch)
    waiter.start()
    try:
        # The watch is open (observed): nothing under the token has index 3 yet.
        wait_for(watch_is_held, timeout=60, what="the server holding the watch")
        # Other requests are answered while it waits, and the member one of them creates is what the
        # watch returns. Held behind the watch they would wait for all of its 50 s: 20 s is plenty
        # on a busy host, and still catches that.
        size = httpx.get(f"{url}/_config/size", timeout=20)
        assert size.status_code == 200 and size.json()["node"]["value"] == "3"
        created = httpx.put(f"{url}/aaa2?prevExist=false", data={"value": "m2=http://127.0.0.1:2"}, timeout=20)
        assert created.status_code == 201, created.text
    finally:
        waiter.join(70)
    answer = watched["answer"]
    assert answer.status_code == 200
    assert answer.json()["action"] == "create" and answer.json()["node"]["key"].endswith("/aaa2")
