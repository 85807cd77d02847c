"""Updates end to end: the real ASGI server, Redis, a real Celery worker, and real `agent`
processes on disk images.  Everything is driven and checked through the REST API."""
from __future__ import annotations

import os
import subprocess
from datetime import datetime
from pathlib import Path

from agent import disk

from .conftest import BIN, wait_for


def build_payload(tmp_path: Path, version: str) -> Path:
    out = tmp_path / f"usr-{version}.img"
    subprocess.run([BIN / "imagebuilder", "payload", "--version", version, "--output", str(out), "--size-mib", "8"],
                   check=True, capture_output=True, env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"})
    return out


def upload(stack, version: str, path: Path) -> dict:
    with open(path, "rb") as f:
        r = stack.api.post("/api/v1/releases/", data={"version": version}, files={"payload": (path.name, f)})
    assert r.status_code == 201, r.text
    return r.json()


def group(stack) -> dict:
    return stack.api.get("/api/v1/groups/").json()["results"][0]


def set_policy(stack, **fields) -> None:
    r = stack.api.patch(f"/api/v1/groups/{group(stack)['id']}/", json=fields)
    assert r.status_code == 200, r.text


def rollout_of(stack, version: str) -> dict | None:
    for r in stack.api.get("/api/v1/rollouts/").json()["results"]:
        if r["release_version"] == version:
            return stack.api.get(f"/api/v1/rollouts/{r['id']}/").json()
    return None


def rollout_hosts(stack, rollout_id: int) -> list[dict]:
    return stack.api.get(f"/api/v1/rollouts/{rollout_id}/hosts", params={"page_size": 500}).json()["results"]


def usr(host: dict) -> dict:
    return {p["label"]: p for p in host["partitions"]}


def gpt_region_digest(path: Path) -> tuple:
    """The partition table and the USR-B attributes as the disk has them (to prove nothing moved)."""
    g = disk.read_gpt(path)
    b = g.get("USR-B")
    return (b.priority, b.tries, b.successful, g.get("USR-A").priority)


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    points = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda p: (p[0], p[1]))
    cur = best = 0
    for _, d in points:
        cur += d
        best = max(best, cur)
    return best


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_promoting_a_release_updates_every_host_with_usr_a_and_b_flipped(stack, tmp_path):
    stack.start_worker()
    set_policy(stack, max_in_flight=2)
    agents = [stack.spawn_agent(f"upd-{i}") for i in range(3)]
    wait_for(lambda: stack.api.get("/api/v1/hosts/", params={"online": "true"}).json()["count"] == 3,
             timeout=120, what="three hosts online")
    release = upload(stack, "200.0.0", build_payload(tmp_path, "200.0.0"))

    assert stack.api.post("/api/v1/channels/alpha/publish", json={"release": release["id"]}).status_code == 200
    assert stack.api.post("/api/v1/channels/beta/promote", json={}).status_code == 200
    assert rollout_of(stack, "200.0.0") is None  # no group follows alpha or beta
    r = stack.api.post("/api/v1/channels/stable/promote", json={})
    assert r.status_code == 200, r.text

    done = wait_for(lambda: (ro := rollout_of(stack, "200.0.0")) and ro["status"] == "completed" and ro,
                    timeout=300, interval=0.5, what="the rollout to complete")
    assert done["counts"]["succeeded"] == 3 and done["counts"]["failed_total"] == 0
    for agent in agents:
        host = stack.host(agent.host_id)
        parts = usr(host)
        assert host["version"] == "200.0.0"
        assert parts["USR-B"]["active"] and parts["USR-B"]["version"] == "200.0.0"
        assert parts["USR-B"]["successful"] and parts["USR-B"]["tries"] == 0, f"{agent.name}: {parts} {host.get('update_status')} seq={host.get('status_seq')}"
        assert parts["USR-B"]["priority"] > parts["USR-A"]["priority"] > 0  # the old one stays for rollback
        assert parts["USR-A"]["version"] == "100.0.0"
        g = disk.read_gpt(agent.disk)  # the disk itself agrees with what was reported
        assert (g.get("USR-B").priority, g.get("USR-B").tries, g.get("USR-B").successful) == (2, 0, True)

    # The policy held: never more than M=2 hosts in flight, each host granted once.
    hosts = rollout_hosts(stack, done["id"])
    assert max_overlap([(ts(h["granted_at"]), ts(h["finished_at"])) for h in hosts]) <= 2
    assert sorted(h["hostname"] for h in hosts) == ["upd-0", "upd-1", "upd-2"]
    assert [h["progress"] for h in hosts] == [1.0, 1.0, 1.0]  # every download shown complete
    kinds = [e["kind"] for e in stack.api.get("/api/v1/events/", params={"page_size": 500}).json()["results"]]
    assert kinds.count("booted_new_version") == 3 and "rollout_completed" in kinds


def test_a_tampered_payload_is_refused_before_the_disk_is_touched_and_the_rollout_halts(stack, tmp_path):
    stack.start_worker()
    set_policy(stack, max_in_flight=1, failure_threshold=1)
    agents = [stack.spawn_agent(f"bad-{i}") for i in range(2)]
    wait_for(lambda: stack.api.get("/api/v1/hosts/", params={"online": "true"}).json()["count"] == 2,
             timeout=120, what="hosts online")
    before = {a.name: gpt_region_digest(a.disk) for a in agents}
    release = upload(stack, "200.0.0", build_payload(tmp_path, "200.0.0"))
    # The stored payload is corrupted after signing (a bad disk, a tampering proxy).
    stored = Path(stack.env["FLEET_MEDIA_ROOT"]) / "releases" / "acme" / f"{release['sha256']}.usr"
    data = bytearray(stored.read_bytes())
    data[4096] ^= 0xFF
    stored.write_bytes(bytes(data))
    assert stack.api.post("/api/v1/channels/stable/publish", json={"release": release["id"]}).status_code == 200

    halted = wait_for(lambda: (ro := rollout_of(stack, "200.0.0")) and ro["status"] == "halted" and ro,
                      timeout=300, interval=0.5, what="the rollout to halt")
    assert halted["counts"]["failed_total"] == 1 and halted["counts"]["pending"] == 1
    [failed] = [h for h in rollout_hosts(stack, halted["id"]) if h["state"] == "failed"]
    assert "sha256" in failed["error"] or "hash" in failed["error"]
    for a in agents:
        assert gpt_region_digest(a.disk) == before[a.name]
        assert stack.host(a.host_id)["version"] == "100.0.0"


def test_a_wrong_signature_is_refused_before_downloading(stack, tmp_path):
    from fleetweb.updates.models import Release

    stack.start_worker()
    agent = stack.spawn_agent("sig-0")
    wait_for(lambda: stack.host(agent.host_id)["online"], timeout=120, what="host online")
    release = upload(stack, "200.0.0", build_payload(tmp_path, "200.0.0"))
    other = upload(stack, "200.0.1", build_payload(tmp_path, "200.0.1"))
    # A database edited without the key: the signature of another release.
    Release.objects.filter(pk=release["id"]).update(signature=other["signature"])
    assert stack.api.post("/api/v1/channels/stable/publish", json={"release": release["id"]}).status_code == 200
    halted = wait_for(lambda: (ro := rollout_of(stack, "200.0.0")) and ro["status"] == "halted" and ro,
                      timeout=300, interval=0.5, what="the rollout to halt")
    [entry] = rollout_hosts(stack, halted["id"])
    assert "signature" in entry["error"]
    assert not any((agent.state_dir / "downloads").glob("*")) if (agent.state_dir / "downloads").exists() else True
    assert usr(stack.host(agent.host_id))["USR-B"]["priority"] == 0


def test_a_release_that_does_not_boot_rolls_each_host_back_and_halts_the_rollout(stack, tmp_path):
    stack.start_worker()
    set_policy(stack, max_in_flight=2, failure_threshold=1)
    agents = [stack.spawn_agent(f"boot-{i}") for i in range(3)]
    wait_for(lambda: stack.api.get("/api/v1/hosts/", params={"online": "true"}).json()["count"] == 3,
             timeout=120, what="hosts online")
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(2 * 1024 * 1024))  # signed and intact, but not a filesystem: it cannot boot
    release = upload(stack, "300.0.0", junk)
    assert stack.api.post("/api/v1/channels/stable/publish", json={"release": release["id"]}).status_code == 200

    # Both hosts of the first wave (M=2) install it, fail their boot and fall back; the first
    # failure halts the rollout (threshold 1), so the third host is never granted.
    halted = wait_for(lambda: (ro := rollout_of(stack, "300.0.0")) and ro["status"] == "halted"
                      and ro["counts"]["rolled_back"] == 2 and ro, timeout=300, interval=0.5,
                      what="the rollout to halt with both in-flight hosts rolled back")
    rolled = [h for h in rollout_hosts(stack, halted["id"]) if h["state"] == "rolled_back"]
    assert len(rolled) == 2 and halted["counts"]["pending"] == 1
    assert all("USR-B" in h["error"] or "health" in h["error"] or "release" in h["error"] for h in rolled), rolled
    for agent in agents:
        host = stack.host(agent.host_id)
        if host["hostname"] in {h["hostname"] for h in rolled}:
            parts = usr(host)
            assert parts["USR-A"]["active"] and host["version"] == "100.0.0"
            assert parts["USR-B"]["tries"] == 0 and not parts["USR-B"]["successful"]  # skipped by gptprio
    events = stack.api.get("/api/v1/events/", params={"kind": "rollback"}).json()["results"]
    assert len(events) == 2


def test_an_agent_killed_mid_download_resumes_after_a_restart_and_never_boots_a_half_written_partition(
        stack, tmp_path):
    import signal

    stack.start_worker()
    agent = stack.new_agent("resume-0")
    assert agent.register().returncode == 0
    agent.env["FLEET_AGENT_DOWNLOAD_RATE"] = str(512 * 1024)  # 8 MiB take ~16 s: time to pull the plug
    agent.start()
    wait_for(lambda: stack.host(agent.host_id)["online"], timeout=120, what="host online")
    release = upload(stack, "200.0.0", build_payload(tmp_path, "200.0.0"))
    assert stack.api.post("/api/v1/channels/stable/publish", json={"release": release["id"]}).status_code == 200
    part = agent.state_dir / "downloads" / f"{release['sha256']}.part"
    wait_for(lambda: part.exists() and part.stat().st_size > 2 * 1024 * 1024, timeout=120, what="a partial download")
    os.killpg(agent.proc.pid, signal.SIGKILL)
    agent.proc.wait(60)
    partial = part.stat().st_size
    assert 0 < partial < release["size"]
    # Nothing was installed: the GPT still boots USR-A, USR-B is not a candidate.
    assert disk.choose_boot(disk.read_gpt(agent.disk)).label == "USR-A"
    assert disk.read_gpt(agent.disk).get("USR-B").priority == 0

    agent.env.pop("FLEET_AGENT_DOWNLOAD_RATE")
    agent.start()
    done = wait_for(lambda: (ro := rollout_of(stack, "200.0.0")) and ro["status"] == "completed" and ro,
                    timeout=300, interval=0.5, what="the rollout to complete after the restart")
    assert done["counts"]["succeeded"] == 1
    assert f"resuming the download at byte {partial}" in agent.output() or "resuming the download" in agent.output()
    host = stack.host(agent.host_id)
    assert host["version"] == "200.0.0" and usr(host)["USR-B"]["active"]
    [entry] = rollout_hosts(stack, done["id"])
    assert entry["state"] == "succeeded"


def test_a_worker_killed_mid_rollout_leaves_a_rollout_that_continues_without_granting_any_host_twice(
        stack, tmp_path):
    import signal

    set_policy(stack, max_in_flight=1)
    for i in range(3):
        stack.spawn_agent(f"wk-{i}")
    wait_for(lambda: stack.api.get("/api/v1/hosts/", params={"online": "true"}).json()["count"] == 3,
             timeout=120, what="hosts online")
    # Beat re-drives running rollouts every few seconds, as in production: a wave message the killed
    # worker had taken but not acknowledged must not stall the rollout.
    stack.start_beat()
    first = stack.start_worker("first")
    release = upload(stack, "200.0.0", build_payload(tmp_path, "200.0.0"))
    assert stack.api.post("/api/v1/channels/stable/publish", json={"release": release["id"]}).status_code == 200
    ro = wait_for(lambda: (r := rollout_of(stack, "200.0.0")) and r["counts"]["succeeded"] >= 1 and r,
                  timeout=300, interval=0.2, what="the first host updated")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(60)
    stack.start_worker("second")
    done = wait_for(lambda: (r := rollout_of(stack, "200.0.0")) and r["status"] == "completed" and r,
                    timeout=300, interval=0.5, what="the rollout to complete on the second worker")
    assert done["counts"]["succeeded"] == 3 and ro["id"] == done["id"]
    hosts = rollout_hosts(stack, done["id"])
    assert [h["attempts"] for h in hosts] == [1, 1, 1]
    assert max_overlap([(ts(h["granted_at"]), ts(h["finished_at"])) for h in hosts]) <= 1


def test_an_agent_offline_across_three_key_rotations_follows_the_chain_and_installs_a_release(stack, tmp_path):
    """Issue 9 item 11: pinned at registration by --key-hash, the agent is stopped while the key is
    rotated three times; back online it follows the endorsements and installs a release signed with
    the newest key (fails on main before this fix: only one endorsement step was accepted).

    The rollout starts while the host is offline: its entry waits (pending) and a wave grants it once
    the host is connected again.  Waves are re-driven by beat's advance_rollouts, as in production
    (a host coming back does not start a wave by itself), so beat runs here too."""
    stack.start_worker()
    stack.start_beat()
    agent = stack.new_agent("offline-1")
    res = agent.register(None, "--key-hash", stack.bootstrap["key_hash"])
    assert res.returncode == 0, res.stderr
    agent.start()
    wait_for(lambda: stack.host(agent.host_id)["online"], timeout=120, what="the host online")
    agent.stop()
    wait_for(lambda: not stack.host(agent.host_id)["online"], timeout=120, what="the host offline")
    for _ in range(3):
        assert stack.api.post("/api/v1/signing-key/rotate", json={}).status_code == 200
    release = upload(stack, "300.0.0", build_payload(tmp_path, "300.0.0"))
    assert stack.api.post("/api/v1/channels/alpha/publish", json={"release": release["id"]}).status_code == 200
    assert stack.api.post("/api/v1/channels/beta/promote", json={}).status_code == 200
    assert stack.api.post("/api/v1/channels/stable/promote", json={}).status_code == 200
    started = wait_for(lambda: rollout_of(stack, "300.0.0"), timeout=120, what="the rollout started")
    [entry] = rollout_hosts(stack, started["id"])
    assert entry["state"] == "pending" and not stack.host(agent.host_id)["online"]
    agent.start()
    try:
        done = wait_for(lambda: (ro := rollout_of(stack, "300.0.0")) and ro["status"] in ("completed", "halted") and ro,
                        timeout=300, interval=0.5, what="the rollout to finish")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrollout hosts: {rollout_hosts(stack, started['id'])}\n"
                             f"agent log:\n{agent.output()}") from None
    log = agent.output()
    assert done["status"] == "completed", log
    assert "signing key rotated from" in log and "(endorsed)" in log, log
    assert stack.host(agent.host_id)["version"] == "300.0.0"
    kinds = [e["kind"] for e in stack.api.get("/api/v1/events/", params={"page_size": 500}).json()["results"]]
    assert "signing_key_rotated" in kinds
