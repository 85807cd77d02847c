"""Re-enrollment and revocation with real agent processes against the real ASGI server (issue 9)."""
from __future__ import annotations

import dataclasses
import shutil

from agent import config as cfg

from .conftest import wait_for


def test_an_impostor_cannot_re_enroll_a_host_and_a_revoked_agent_is_cut_off_at_once(stack):
    agent = stack.spawn_agent("e2e-victim")
    wait_for(lambda: stack.host(agent.host_id)["online"], timeout=120, what="victim online")

    # Another machine claiming the same machine id with the organization's token: refused, nothing changed.
    impostor = dataclasses.replace(agent, dir=stack.workdir / "impostor", host_id=None, proc=None, log=None)
    shutil.copytree(agent.root, impostor.root)
    shutil.copyfile(agent.disk, impostor.disk)
    res = impostor.register()
    assert res.returncode == cfg.EXIT_HOST_EXISTS, (res.returncode, res.stderr)
    assert "already enrolled" in res.stderr and "allow" in res.stderr
    assert not (impostor.state_dir / "agent.json").exists()
    assert stack.host(agent.host_id)["online"] is True
    events = stack.api.get("/api/v1/events/", params={"kind": "reenrollment_refused"}).json()["results"]
    assert len(events) == 1 and events[0]["host"] == agent.host_id

    # The host itself re-registers with its own credential: allowed, same host.
    agent.stop()
    host_id = agent.host_id
    res = agent.register()
    assert res.returncode == 0, res.stderr
    assert agent.host_id == host_id

    # Revoking its credential closes the live socket (4403) and it is not let back in.
    agent.start()
    wait_for(lambda: stack.host(agent.host_id)["online"], timeout=120, what="agent back online")
    r = stack.api.post(f"/api/v1/hosts/{agent.host_id}/revoke-credential")
    assert r.status_code == 200, r.text
    wait_for(lambda: str(4403) in agent.output(), timeout=60, what="the agent told 4403")
    wait_for(lambda: stack.host(agent.host_id)["online"] is False, timeout=60, what="host offline")
