"""Reboot strategies carried out by ``Agent.decide_reboot()`` against a real etcd, with a controlled clock."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
import time
import uuid
from datetime import datetime

import pytest

from agent import config as cfg
from agent.agent import Agent
from agent.etcd import make_client
from agent.locksmith import LockError, Locksmith
from agent.updater import NEED_REBOOT
from scripts.services import free_port, start_etcd, test_etcd_endpoints

SATURDAY_3AM = datetime(2024, 1, 6, 3, 0)
SATURDAY_4_30 = datetime(2024, 1, 6, 4, 30)


class Clock:
    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def make_agent(registered, caplog):
    caplog.set_level(logging.INFO, logger="agent")   # decisions() counts the agent's log lines
    agents = []

    def make(strategy: str, endpoints=None, clock=None, **policy) -> Agent:
        config = registered()
        agent = Agent(config, clock=clock or Clock(SATURDAY_4_30))
        agent._reboot_wanted = asyncio.Event()
        agent.lock_retry = (0.05, 0.1)
        agent.etcd_probe_timeout = 30.0   # a busy host's etcd may need more than 2 s to answer: not a failure here
        set_policy(agent, strategy, endpoints, **policy)
        agent.engine.status = NEED_REBOOT
        agent.engine.installed = {"version": "2.0.0", "rollout": 1}
        agents.append(agent)
        return agent
    yield make
    for agent in agents:
        for task in (agent._reboot_timer, agent._release_task):
            if task is not None:
                task.cancel()


def set_policy(agent: Agent, strategy: str, endpoints=None, **extra) -> None:
    policy = {"revision": 1, "group": "web", "channel": "stable", "reboot_strategy": strategy,
              **({"etcd_endpoints": endpoints} if endpoints else {}), **extra}
    agent.state["policy"] = cfg.store_etcd_policy(agent.config.state_dir, policy, agent.config.org)


def events(agent: Agent, kind: str | None = None) -> list[dict]:
    out = [json.loads(text) for text in agent.outbox]
    return [e for e in out if kind is None or e["kind"] == kind]


async def until(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.02)


def decisions(caplog) -> int:
    """How many reboot decisions the agent has taken so far (it logs one line per decision)."""
    return sum(r.getMessage().startswith("reboot decision:") for r in caplog.records)


async def more_decisions(caplog, n: int) -> None:
    """Wait until the agent has taken N more decisions (its re-checks, observed rather than slept)."""
    target = decisions(caplog) + n
    await until(lambda: decisions(caplog) >= target)


@pytest.fixture
def prefix() -> str:
    return f"fleet/t{uuid.uuid4().hex[:12]}/"


def semaphore(prefix: str, group: str = "web") -> Locksmith:
    return Locksmith(make_client(test_etcd_endpoints()), group, prefix)


async def test_off_never_reboots_and_reports_reboot_needed(make_agent):
    agent = make_agent("off", test_etcd_endpoints())
    for _ in range(3):
        await agent.decide_reboot()
    assert agent._reboot_timer is None                # no later decision is scheduled: this is final
    assert not agent._reboot_wanted.is_set()
    assert [e["data"]["strategy"] for e in events(agent, "reboot_needed")] == ["off"] * 3
    assert not events(agent, "rebooting") and not events(agent, "lock_acquired")


async def test_reboot_waits_outside_the_window_and_proceeds_inside(make_agent, caplog):
    clock = Clock(SATURDAY_3AM)
    agent = make_agent("reboot", clock=clock, reboot_window_start="Sat 04:00", reboot_window_length="1h")
    await agent.decide_reboot()
    await more_decisions(caplog, 3)                   # several re-checks: still outside
    assert not agent._reboot_wanted.is_set()
    assert len(events(agent, "reboot_waiting")) == 1  # said once, not per re-check
    clock.now = SATURDAY_4_30
    await until(agent._reboot_wanted.is_set)
    assert events(agent, "rebooting")[0]["data"]["strategy"] == "reboot"


async def test_etcd_lock_takes_the_group_semaphore_inside_the_window_then_reboots(make_agent, prefix, caplog):
    clock = Clock(SATURDAY_3AM)
    agent = make_agent("etcd-lock", test_etcd_endpoints(), clock=clock, etcd_prefix=prefix, lock_group="db",
                       max_concurrent_reboots=2, reboot_window_start="Sat 04:00", reboot_window_length="1h")
    await agent.decide_reboot()
    await more_decisions(caplog, 3)                   # several re-checks, all outside the window
    assert not agent._reboot_wanted.is_set()
    assert events(agent, "lock_waiting")[0]["data"]["reason"] == "outside_window"
    key = f"{prefix}coreos.com/updateengine/rebootlock/groups/db/semaphore"
    assert make_client(test_etcd_endpoints()).get(key) == (None, None)     # not even created
    clock.now = SATURDAY_4_30
    await until(agent._reboot_wanted.is_set)
    machine_id = agent.config.machine_id
    sem = semaphore(prefix, "db").get()
    assert sem.holders == [machine_id] and sem.max == 2 and sem.semaphore == 1
    acquired = events(agent, "lock_acquired")[0]["data"]
    assert acquired["holder"] == machine_id and acquired["key"] == key
    held = cfg.load_lock_file(agent.config.state_dir)
    assert held["holder"] == machine_id and held["prefix"] == prefix and held["group"] == "db"
    assert [e["kind"] for e in events(agent)][-2:] == ["lock_acquired", "rebooting"]


async def test_etcd_lock_waits_for_a_free_slot_and_checks_the_window_again(make_agent, prefix, caplog):
    other = semaphore(prefix)
    other.lock("someone-else")
    clock = Clock(SATURDAY_4_30)
    agent = make_agent("etcd-lock", test_etcd_endpoints(), clock=clock, etcd_prefix=prefix,
                       reboot_window_start="Sat 04:00", reboot_window_length="1h")
    await agent.decide_reboot()
    waiting = events(agent, "lock_waiting")
    assert waiting[0]["data"]["reason"] == "no_slots" and waiting[0]["data"]["holders"] == ["someone-else"]
    await more_decisions(caplog, 3)                       # retried, still full; said once
    assert len(events(agent, "lock_waiting")) == 1 and not agent._reboot_wanted.is_set()
    async with agent._deciding:                           # between two decisions (none sees both changes half done)
        clock.now = datetime(2024, 1, 6, 6, 0)           # the window closed while we waited
        await asyncio.to_thread(other.unlock, "someone-else")
    await until(lambda: events(agent, "lock_waiting")[-1]["data"]["reason"] == "outside_window")
    await more_decisions(caplog, 2)                       # re-checked since: still outside, the free slot not taken
    assert not agent._reboot_wanted.is_set()
    assert semaphore(prefix).get().holders == []
    clock.now = datetime(2024, 1, 13, 4, 1)              # next Saturday
    await until(agent._reboot_wanted.is_set)
    assert semaphore(prefix).get().holders == [agent.config.machine_id]


async def test_etcd_lock_without_endpoints_waits_and_says_why(make_agent):
    agent = make_agent("etcd-lock")
    await agent.decide_reboot()
    assert not agent._reboot_wanted.is_set()
    assert events(agent, "lock_waiting")[0]["data"]["reason"] == "etcd_unavailable"


async def test_best_effort_falls_back_to_reboot_when_etcd_is_down_and_locks_when_it_is_up(make_agent, prefix):
    dead = [f"http://127.0.0.1:{free_port()}"]
    agent = make_agent("best-effort", dead, etcd_prefix=prefix)
    await agent.decide_reboot()
    assert agent._reboot_wanted.is_set()
    path = events(agent, "reboot_path")[0]["data"]
    assert path["strategy"] == "best-effort" and path["path"] == "reboot" and "did not answer" in path["reason"]
    assert cfg.load_lock_file(agent.config.state_dir) is None

    agent = make_agent("best-effort", test_etcd_endpoints(), etcd_prefix=prefix)
    await agent.decide_reboot()
    assert agent._reboot_wanted.is_set()
    assert events(agent, "reboot_path")[0]["data"]["path"] == "etcd-lock"
    assert events(agent, "lock_acquired")
    assert semaphore(prefix).get().holders == [agent.config.machine_id]


async def test_a_strategy_change_takes_effect_on_the_next_decision(make_agent):
    agent = make_agent("off")
    await agent.decide_reboot()
    assert not agent._reboot_wanted.is_set()
    set_policy(agent, "reboot")
    await agent.decide_reboot()
    assert agent._reboot_wanted.is_set()


async def test_the_lock_is_released_after_boot_with_backoff(make_agent, prefix, tmp_path, caplog):
    port, peer = free_port(), free_port()
    endpoint = [f"http://127.0.0.1:{port}"]
    agent = make_agent("etcd-lock", endpoint, etcd_prefix=prefix)
    agent.release_backoff = (0.2, 0.8)
    machine_id = agent.config.machine_id
    cfg.save_lock_file(agent.config.state_dir, {"holder": machine_id, "key": "k", "group": "web", "prefix": prefix,
                                                "endpoints": endpoint, "boot_id": "an-earlier-boot"})
    attempts = []
    release_once = agent._release_once

    locked = threading.Event()

    def counting(held):
        attempts.append(held)
        if len(attempts) > 3 and not locked.is_set():      # etcd is starting: not before our lock is back
            raise LockError("etcd_unavailable", "starting")
        return release_once(held)
    agent._release_once = counting
    await agent.after_boot()                  # nothing pending: the boot is settled, release starts
    await until(lambda: len(attempts) >= 3)   # etcd is down: 0.2 s, then 0.4 s
    # etcd comes up (its own data dir: never the dev one) while the agent keeps retrying
    server = await asyncio.to_thread(start_etcd, port, peer, data_dir=tmp_path / "etcd", timeout=120)
    with server:
        Locksmith(make_client([server.url]), "web", prefix).lock(machine_id)
        locked.set()
        await until(lambda: events(agent, "lock_released"))
        assert Locksmith(make_client([server.url]), "web", prefix).get().holders == []
    # The waits it chose between attempts (each failure logs its delay): doubling from 0.2 s, capped at 0.8 s.
    delays = [r.args[-1] for r in caplog.records if r.getMessage().startswith("cannot release the reboot lock")]
    assert len(delays) == len(attempts) - 1 >= 3           # every attempt but the last failed, then waited
    assert delays[:3] == [0.2, 0.4, 0.8] and set(delays[2:]) == {0.8}
    assert cfg.load_lock_file(agent.config.state_dir) is None
    released = events(agent, "lock_released")[0]["data"]
    assert released["holder"] == machine_id and released["holders"] == []


async def test_a_lock_taken_in_this_boot_is_kept_until_the_reboot(make_agent, prefix):
    agent = make_agent("etcd-lock", test_etcd_endpoints(), etcd_prefix=prefix)
    await agent.decide_reboot()
    assert agent._reboot_wanted.is_set()
    await agent.after_boot()
    assert agent._release_task is None                # no release started (nor to come: after_boot is done)
    assert cfg.load_lock_file(agent.config.state_dir)
    assert semaphore(prefix).get().holders == [agent.config.machine_id]


def test_etcd_secrets_stay_out_of_state_json_and_are_written_0600(tmp_path):
    public = cfg.store_etcd_policy(tmp_path, {"revision": 1, "group": "web", "channel": "stable",
                                              "reboot_strategy": "etcd-lock", "etcd_endpoints": ["http://e:2379"],
                                              "etcd_username": "org-acme", "etcd_password": "s3cret",
                                              "etcd_ca": "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----",
                                              "max_concurrent_reboots": 3}, "acme")
    assert "etcd_password" not in public and "etcd_ca" not in public and public["etcd_username"] == "org-acme"
    settings = cfg.load_etcd_settings(tmp_path)
    assert settings.password == "s3cret" and settings.prefix == "fleet/acme/" and settings.max == 3
    assert settings.group == "web" and open(settings.ca).read().startswith("-----BEGIN")
    for name in ("etcd.json", "etcd-ca.pem"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600


async def test_the_unlock_command_gives_the_slot_back(make_agent, prefix):
    agent = make_agent("etcd-lock", test_etcd_endpoints(), etcd_prefix=prefix)
    await agent.decide_reboot()
    assert semaphore(prefix).get().holders == [agent.config.machine_id]
    assert await agent.handle_command({"type": "command", "command": "unlock", "id": "c1"}) is None
    assert semaphore(prefix).get().holders == []
    released = events(agent, "lock_released")[-1]["data"]
    assert released["id"] == "c1" and released["holder"] == agent.config.machine_id
    assert cfg.load_lock_file(agent.config.state_dir) is None


async def test_a_hosts_cloud_config_reboot_strategy_and_window_win_over_the_group_policy(make_agent):
    """coreos.update.reboot_strategy / coreos.locksmith.window_* applied on the host take precedence
    over the group's policy, as for locksmithd on a host configured by coreos-cloudinit."""
    from agent import apply

    agent = make_agent("reboot")  # the group says: reboot at once
    apply.save_state(agent.config.state_dir, {
        "revision": 3, "errors": [],
        "update": apply.update_settings("#cloud-config\ncoreos:\n  update:\n    reboot_strategy: \"off\"\n"),
        "locksmith": apply.locksmith_settings("#cloud-config\ncoreos:\n  locksmith:\n    window_start: Sun 04:00\n"
                                              "    window_length: 1h\n")})
    assert agent._strategy() == "off"
    assert agent._window_settings() == ("Sun 04:00", "1h")
    await agent.decide_reboot()
    assert agent._reboot_timer is None                # no later decision is scheduled: this is final
    assert not agent._reboot_wanted.is_set()
    assert [e["data"]["strategy"] for e in events(agent, "reboot_needed")] == ["off"]
