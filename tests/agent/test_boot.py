"""After-boot assessment (agent/boot.py), signing key pinning (agent/keys.py), the reboot decision
(agent/reboot.py) and the operator rollback command."""
from __future__ import annotations

import threading
from datetime import datetime

import pytest

from agent import boot, keys, protocol, reboot, signing
from agent import disk as gptdisk
from agent.host import Host
from agent.window import parse_window
from imagebuilder import disk as builder

from .test_update import key_policy, keypair, start_agent, stop_agent, until, vector, wait_for, ws_server  # noqa: F401


@pytest.fixture
def installed(disk_image, tmp_path):
    """USR-B holds 2.0.0, installed (2/1/0) in the boot that is running now; pending file written."""
    disk, state = str(disk_image), tmp_path / "state"
    host = Host(disk=disk, state_dir=state)
    boot_id = host.boot_id()                   # the running boot (USR-A) starts before the install
    payload = builder.build_payload(tmp_path / "p.img", "2.0.0", size_mib=8)
    from agent.updater import write_partition
    write_partition(disk, 4, payload["path"], payload["size"], payload["sha256"])
    gptdisk.modify(disk, gptdisk.install_prepare, "USR-B")
    boot.save_pending(state, {"kind": "update", "phase": "installed", "version": "2.0.0", "partition": 4,
                              "label": "USR-B", "rollout": 3, "previous_version": "1.0.0",
                              "previous_partition": 3, "boot_id": boot_id})
    return host, state


def test_it_waits_while_the_installing_boot_still_runs(installed):
    host, state = installed
    assert boot.assess(host, state).outcome == boot.WAIT_REBOOT


def test_a_healthy_boot_is_marked_good(installed):
    host, state = installed
    host.reboot()
    result = boot.assess(host, state, health_cmd="test \"$FLEET_VERSION\" = 2.0.0 && test \"$FLEET_USR\" = USR-B")
    assert result.outcome == boot.HEALTHY and result.version == "2.0.0"
    assert vector(host.disk, "USR-B") == (2, 0, 1)


def test_a_failing_health_command_is_unhealthy_and_the_next_boot_is_a_rollback(installed):
    host, state = installed
    host.reboot()
    result = boot.assess(host, state, health_cmd="echo broken >&2; exit 3")
    assert result.outcome == boot.UNHEALTHY
    assert result.reason == "health command 'echo broken >&2; exit 3' exited with 3: broken"
    assert boot.assess(host, state, health_cmd="exit 3").outcome == boot.UNHEALTHY   # same boot: reboot still due
    host.reboot()
    result = boot.assess(host, state)
    assert result.outcome == boot.ROLLED_BACK and result.version == "1.0.0" and "exited with 3" in result.reason
    assert vector(host.disk, "USR-B") == (2, 0, 0)


def test_a_health_command_that_hangs_times_out(installed):
    host, state = installed
    host.reboot()
    result = boot.assess(host, state, health_cmd="sleep 5", health_timeout=0.3)
    assert result.outcome == boot.UNHEALTHY and "did not finish within" in result.reason


def test_a_boot_that_already_fell_back_is_reported_as_a_rollback(installed):
    host, state = installed
    gptdisk.boot_choice(host.disk)            # a boot the agent never saw used up USR-B's try
    host.reboot()
    result = boot.assess(host, state)
    assert result.outcome == boot.ROLLED_BACK and result.version == "1.0.0"
    assert result.reason.startswith("USR-B did not boot") and "fell back to USR-A" in result.reason


def test_it_pins_the_first_key_and_follows_only_endorsed_rotations(tmp_path):
    a, b, c = signing.generate(), signing.generate(), signing.generate()
    assert keys.apply_policy_key(tmp_path, {}).outcome == keys.ABSENT
    assert keys.apply_policy_key(tmp_path, {"signing_key": a[1]}).outcome == keys.PINNED
    assert keys.apply_policy_key(tmp_path, {"signing_key": a[1]}).outcome == keys.UNCHANGED
    res = keys.apply_policy_key(tmp_path, {"signing_key": b[1]})
    assert res.outcome == keys.MISMATCH and "no endorsement" in res.message
    forged = signing.endorse(c[0], b[1])                 # endorsed by a key nobody pinned
    assert keys.apply_policy_key(tmp_path, {"signing_key": b[1], "signing_key_endorsement": forged}).outcome \
        == keys.MISMATCH
    assert keys.pinned_key(tmp_path) == a[1]
    res = keys.apply_policy_key(tmp_path, {"signing_key": b[1], "signing_key_endorsement": signing.endorse(a[0], b[1])})
    assert res.outcome == keys.ROTATED and res.previous_key_id == signing.key_id(a[1])
    assert keys.pinned_key(tmp_path) == b[1]
    assert keys.apply_policy_key(tmp_path, {"signing_key": "not base64!"}).outcome == keys.MISMATCH


@pytest.mark.parametrize("strategy, etcd, action", [
    ("reboot", None, reboot.NOW), ("best-effort", None, reboot.NOW), (None, None, reboot.NOW),
    ("best-effort", ["http://127.0.0.1:2379"], reboot.LOCK), ("etcd-lock", None, reboot.WAIT_LOCK),
    ("etcd-lock", ["http://127.0.0.1:2379"], reboot.LOCK),
    ("off", None, reboot.OFF),
])
def test_the_reboot_decision_follows_the_strategy(strategy, etcd, action):
    assert reboot.decide(strategy, etcd, None, datetime(2024, 1, 6, 12, 0)).action == action


def test_the_reboot_decision_waits_for_the_window():
    window = parse_window("Sat 04:00", "1h")
    inside = reboot.decide("reboot", None, window, datetime(2024, 1, 6, 4, 30))      # a Saturday
    outside = reboot.decide("reboot", None, window, datetime(2024, 1, 6, 3, 0))
    assert inside.action == reboot.NOW
    assert outside.action == reboot.WAIT_WINDOW and outside.delay == 3600


def test_the_rollback_command_boots_the_other_good_partition(ws_server, keypair, registered, tmp_path):  # noqa: F811
    cfg = registered("ws://127.0.0.1:1/")
    disk = cfg.disk
    payload = builder.build_payload(tmp_path / "p.img", "0.5.0", size_mib=8)
    from agent.updater import write_partition
    write_partition(disk, 4, payload["path"], payload["size"], payload["sha256"])
    gptdisk.modify(disk, gptdisk.mark_good, "USR-B")
    gptdisk.modify(disk, gptdisk.prioritize, "USR-A")          # USR-A runs, USR-B is the old good one
    done = threading.Event()

    def script(srv, ws, i):
        hello = srv.recv(ws, "hello")
        ws.send(key_policy(1, "reboot", keypair))
        if i == 0:
            until(srv, ws, "status")
            ws.send(protocol.encode("command", "server", command="rollback", id="r1"))
            srv.rebooting = until(srv, ws, "event", lambda f: f["kind"] == "rebooting")
        else:
            srv.hello = hello
            srv.rollback = until(srv, ws, "event", lambda f: f["kind"] == "rollback")
            done.set()

    srv = ws_server(script)
    config = registered(srv.url)
    proc = start_agent(config)
    try:
        wait_for(done, proc, "the operator rollback")
    finally:
        err = stop_agent(proc)
    assert not srv.errors, (srv.errors, err[-3000:])
    assert srv.rebooting["data"]["id"] == "r1" and srv.rebooting["data"]["version"] == "0.5.0"
    assert srv.hello["version"] == "0.5.0"
    assert srv.rollback["data"] == {"reason": "operator requested", "failed_version": "1.0.0", "version": "0.5.0",
                                    "rollout": None}
    assert gptdisk.read_gpt(disk).get("USR-B").priority > gptdisk.read_gpt(disk).get("USR-A").priority
