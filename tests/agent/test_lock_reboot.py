"""End to end: ``agent run`` installs an update, takes the etcd semaphore, reboots (simulated) and
releases the semaphore after the new version booted good."""
from __future__ import annotations

import json
import threading
import uuid

from agent.etcd import make_client
from scripts.services import test_etcd_endpoints

from .test_lock_contention import history as _history
from .test_update import (  # noqa: F401  (fixtures)
    event,
    key_policy,
    keypair,
    payload_server,
    payloads,
    start_agent,
    stop_agent,
    until,
    update_frame,
    wait_for,
    ws_server,
)


def history(key):
    return _history(test_etcd_endpoints(), key)


def test_an_etcd_lock_host_reboots_holding_the_semaphore_and_releases_it_after_boot(
        ws_server, payload_server, payloads, keypair, registered):  # noqa: F811
    prefix = f"fleet/t{uuid.uuid4().hex[:8]}/"
    key = f"{prefix}coreos.com/updateengine/rebootlock/groups/web/semaphore"
    etcd = make_client(test_etcd_endpoints())
    seen = {}
    done = threading.Event()
    lock_policy = dict(etcd_endpoints=test_etcd_endpoints(), etcd_prefix=prefix, lock_group="web",
                       max_concurrent_reboots=2)

    def script(srv, ws, i):
        ws.send(key_policy(1, "etcd-lock", keypair, **lock_policy))
        if i == 0:
            ws.send(update_frame(payloads["2.0.0"], f"{payload_server.base}/2.0.0", keypair, rollout=5))
            seen["acquired"] = event(srv, ws, "lock_acquired")
            seen["rebooting"] = event(srv, ws, "rebooting")
        else:
            names = {"booted_new_version": "booted", "lock_released": "released"}  # in either order
            while not {"booted", "released"} <= seen.keys():
                frame = until(srv, ws, "event", lambda f: f["kind"] in names)
                seen[names[frame["kind"]]] = frame
            done.set()

    srv = ws_server(script)
    config = registered(srv.url)
    proc = start_agent(config)
    try:
        wait_for(done, proc, "lock, reboot, boot and release")
    finally:
        err = stop_agent(proc)
    assert not srv.errors, (srv.errors, err[-3000:])
    assert seen["acquired"]["data"]["holder"] == config.machine_id and seen["acquired"]["data"]["key"] == key
    # every value the key had (a watch from revision 1): created, held across the reboot, released
    assert history(key) == [{"semaphore": 2, "max": 2, "holders": []},
                            {"semaphore": 1, "max": 2, "holders": [config.machine_id]},
                            {"semaphore": 2, "max": 2, "holders": []}]
    assert seen["rebooting"]["data"]["strategy"] == "etcd-lock"
    assert seen["released"]["data"]["holders"] == []
    assert json.loads(etcd.get(key)[0]) == {"semaphore": 2, "max": 2, "holders": []}
    assert not (config.state_dir / "reboot-lock.json").exists()
    etcd.close()
