"""A stack the fault scenarios can break: uvicorn web process(es), Celery worker(s) and beat, the
test PostgreSQL, a Redis of the stack's own (killed and restarted at will, on the same port), etcd
when asked for, and real `agent` processes on disk images.

The rollout every scenario runs: one release (the e2e tests' smallest payload, 8 MiB) published to
the group's channel, six agents downloading at 4 MiB/s so that a rollout lasts long enough to break
it in the middle, at most two hosts in flight, one failure halts it, and an update timeout far above
any outage a scenario causes (an outage shorter than it must fail nothing).
"""
from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from fleetweb.fleet.models import Group, Host
from fleetweb.updates.choices import HostUpdateState
from scripts.services import Service, start_redis
from tests.conftest import PASSWORD
from tests.e2e import conftest as e2e
from tests.e2e.conftest import (
    AgentProc,
    Stack,
    bootstrap_org,
    free_port,
    stack_env,
    start_web,
    stop_process,
    wait_for,
)
from tests.e2e.test_updates_end_to_end import build_payload, upload

from . import timeline

# The e2e fixtures these scenarios share: the disk image template (one per session) and etcd.
template_disk = e2e.template_disk
etcd_env = e2e.etcd_env

VERSION = "200.0.0"
AGENTS = 6
MAX_IN_FLIGHT = 2
UPDATE_TIMEOUT = 120            # seconds; every outage here lasts a fraction of it
DOWNLOAD_RATE = 4 * 1024 * 1024  # bytes/s: 8 MiB take ~2 s, time to break a rollout mid-download
# How long a killed service stays down: longer than the download retries agents had before issue 10
# (five attempts over 7.5 s, then the host failed), a small fraction of the update timeout.  A fault's duration, not a
# wait: what follows waits for outcomes.
OUTAGE = 10.0
ROLLOUT_TIMEOUT = 100           # the longest wait for a rollout to finish (< UPDATE_TIMEOUT: a host
                                # left waiting for its grant shows as stuck, not failed)


@dataclass
class Web:
    """One uvicorn process on a fixed port: killed and started again on the same port."""
    port: int
    env: dict
    log: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Web:
        self.proc = start_web(self.env, self.port, self.log)
        return self

    def kill(self) -> None:
        """kill -9, no goodbye to its sockets."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@dataclass
class FaultStack(Stack):
    webs: list[Web] = field(default_factory=list)
    redis: Service | None = None

    # -- processes ---------------------------------------------------------------------------
    def add_web(self) -> Web:
        """Another web process of the same deployment (same database, Redis, media)."""
        web = Web(free_port(), self.env, self.workdir / f"web-{len(self.webs)}.log").start()
        self.webs.append(web)
        return web

    def kill_redis(self) -> None:
        """kill -9 the stack's Redis (its data goes with it: it runs without persistence)."""
        os.kill(self.redis.pid, signal.SIGKILL)
        os.waitpid(self.redis.pid, 0)
        self.redis.stop()  # nothing left to stop: removes its data dir

    def restart_redis(self) -> None:
        """A fresh, empty Redis on the same port."""
        self.redis = start_redis(self.redis.port, reuse=False)

    def server_log(self) -> str:
        return "\n".join(f"--- {w.log.name}\n{w.log.read_text()}" for w in self.webs)

    # -- the fleet and the rollout ---------------------------------------------------------------
    def spawn_fleet(self, prefix: str, n: int = AGENTS, *, webs: list[Web] | None = None,
                    register_args=lambda i: (), download_rate: int | None = DOWNLOAD_RATE) -> list[AgentProc]:
        """N agents named PREFIX-i, registered and started (in parallel), spread over WEBS in turn
        (default: the first web process); returns once every host is online."""
        webs = webs or self.webs[:1]
        agents = [self.new_agent(f"{prefix}-{i}", server=webs[i % len(webs)].url) for i in range(n)]

        def enroll(i: int) -> None:
            agent = agents[i]
            if download_rate:
                agent.env["FLEET_AGENT_DOWNLOAD_RATE"] = str(download_rate)
            res = agent.register(None, *register_args(i))
            assert res.returncode == 0, f"{agent.name}: agent register failed ({res.returncode}): {res.stderr}"
            agent.start()

        with ThreadPoolExecutor(n) as pool:
            list(pool.map(enroll, range(n)))
        ids = [a.host_id for a in agents]
        wait_for(lambda: Host.objects.filter(pk__in=ids, online=True).count() == n, timeout=60,
                 what=f"{n} hosts online")
        return agents

    def group(self) -> dict:
        return self.api.get("/api/v1/groups/").json()["results"][0]

    def set_policy(self, **fields) -> dict:
        r = self.api.patch(f"/api/v1/groups/{self.group()['id']}/", json=fields)
        assert r.status_code == 200, r.text
        return r.json()

    def publish(self, payload: Path, version: str = VERSION, channel: str = "stable") -> None:
        """Upload the release and put it on CHANNEL: the rollout of every group following it starts."""
        release = upload(self, version, payload)
        r = self.api.post(f"/api/v1/channels/{channel}/publish", json={"release": release["id"]})
        assert r.status_code == 200, r.text


def wait_policy_applied(agents: list[AgentProc], channel: str, timeout: float = 60.0) -> dict[str, int]:
    """Wait until every agent's host acknowledged its group's current policy revision (the
    ``policy_applied`` the server records) and its update.conf follows CHANNEL.  Returns per agent the
    host's ``status_seq`` (the count of its heartbeats) when the acknowledgement was first seen."""
    seen: dict[str, int] = {}
    ids = {a.host_id: a for a in agents}

    def acked() -> bool:
        for host in Host.objects.filter(pk__in=list(ids)).select_related("group"):
            agent = ids[str(host.pk)]
            if agent.name not in seen and host.policy_revision >= host.group.policy_revision:
                seen[agent.name] = host.status_seq
        return len(seen) == len(agents)

    try:
        wait_for(acked, timeout=timeout, interval=0.1, what="every host to acknowledge the policy")
    except AssertionError as exc:
        revision = Group.objects.get(pk=Host.objects.get(pk=agents[0].host_id).group_id).policy_revision
        late = {h.hostname: h.policy_revision for h in Host.objects.filter(pk__in=list(ids))
                if h.hostname not in seen}
        raise AssertionError(f"{exc}: group revision {revision}, not acknowledged by {late}") from None
    stale = {a.name: a.update_conf() for a in agents if f"GROUP={channel}\n" not in a.update_conf()}
    assert not stale, f"update.conf does not follow {channel}: {stale}"
    return seen


def heartbeats(agents: list[AgentProc]) -> dict[str, int]:
    """Each agent's host's heartbeat count as recorded now (``status_seq``)."""
    names = {a.host_id: a.name for a in agents}
    return {names[str(pk)]: seq for pk, seq in Host.objects.filter(pk__in=list(names)).values_list("pk", "status_seq")}


def downloading(agents: list[AgentProc], size: int) -> list[AgentProc]:
    """The agents whose download of the payload (SIZE bytes) is in its first half, on their disks."""
    def part(agent: AgentProc) -> int:
        return max((p.stat().st_size for p in (agent.state_dir / "downloads").glob("*.part")), default=0)
    return [a for a in agents if 0 < part(a) < size // 2]


def wait_mid_rollout(agents: list[AgentProc], payload: Path, version: str = VERSION) -> list[AgentProc]:
    """Wait for the middle of the rollout: a wave done and hosts of a later one mid-download (what
    their disks hold, not what the server last heard); returns the agents mid-download."""
    timeline.wait(lambda: timeline.rollout_for(version).hosts.filter(state=HostUpdateState.SUCCEEDED).exists(),
                  "a wave done", version)
    size = payload.stat().st_size
    return timeline.wait(lambda: downloading(agents, size), "hosts of a later wave mid-download", version,
                         interval=0.05)


@pytest.fixture(scope="session")
def payload(tmp_path_factory) -> Path:
    """The release payload (8 MiB, as in the e2e tests), built once per session."""
    return build_payload(tmp_path_factory.mktemp("payload"), VERSION)


@pytest.fixture
def fault_stack(transactional_db, template_disk, tmp_path) -> FaultStack:
    """The stack with one web process, one Celery worker and beat (as in production: beat re-drives
    running rollouts every few seconds), and the scenarios' rollout policy; no agents yet."""
    redis = start_redis(None, reuse=False)
    port = free_port()
    env = stack_env(f"http://127.0.0.1:{port}", tmp_path, redis.url)
    boot = bootstrap_org()
    web = Web(port, env, tmp_path / "web-0.log")
    api = httpx.Client(base_url=web.url, headers={"Authorization": f"Bearer {boot['api_key']}"}, timeout=10)
    s = FaultStack(url=web.url, bootstrap=boot, login=("alice", PASSWORD), api=api, workdir=tmp_path,
                   template_disk=template_disk, env=env, server=None, webs=[web], redis=redis)
    try:
        s.start_beat()
        s.start_worker()    # both boot while the web process does
        web.start()
        s.server = web.proc
        s.set_policy(max_in_flight=MAX_IN_FLIGHT, update_timeout=UPDATE_TIMEOUT, failure_threshold=1)
        yield s
    finally:
        # Everything at once (each stop is a SIGTERM and a wait): agents first, so that their sockets
        # close before the web processes go.
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(AgentProc.stop, s.agents))
            list(pool.map(stop_process, s.workers))
            list(pool.map(Web.stop, s.webs))
        api.close()
        s.redis.stop()
