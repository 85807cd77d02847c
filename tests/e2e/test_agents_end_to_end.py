"""The walking skeleton end to end: real ASGI server + Redis channel layer + real agent processes."""
from __future__ import annotations

from .conftest import wait_for


def test_it_registers_agents_reports_partitions_and_follows_a_channel_switch(stack):
    agents = [stack.spawn_agent(f"e2e-host-{i}") for i in range(3)]
    group_id = stack.api.get("/api/v1/groups/").json()["results"][0]["id"]

    def all_online():
        hosts = stack.api.get("/api/v1/hosts/", params={"online": "true"}).json()
        return hosts["count"] == 3 and hosts

    hosts = wait_for(all_online, timeout=120, what="three hosts online")
    for host in hosts["results"]:
        usr = {p["label"]: p for p in host["partitions"]}
        assert usr["USR-A"]["active"] and usr["USR-A"]["version"] == "100.0.0"
        assert usr["USR-A"]["priority"] == 1 and usr["USR-A"]["successful"] is True
        assert usr["USR-B"]["priority"] == 0 and not usr["USR-B"]["active"]
        assert host["version"] == "100.0.0"

    r = stack.api.patch(f"/api/v1/groups/{group_id}/", json={"channel": "beta"})
    assert r.status_code == 200, r.text

    for agent in agents:
        wait_for(lambda a=agent: "GROUP=beta" in a.update_conf(), timeout=60, what=f"{agent.name} update.conf")
        assert "# demo host" in agent.update_conf()  # other lines are kept
    wait_for(lambda: all(h["policy_applied"] and h["reported_channel"] == "beta"
                         for h in stack.api.get("/api/v1/hosts/").json()["results"]),
             timeout=60, what="every host acknowledging the new policy")
    kinds = [e["kind"] for e in stack.api.get("/api/v1/events/", params={"page_size": 200}).json()["results"]]
    assert "channel_changed" in kinds and kinds.count("policy_applied") >= 3

    # A disconnect marks the host offline at once.
    agents[0].stop()
    wait_for(lambda: stack.host(agents[0].host_id)["online"] is False, timeout=60, what="host offline")


def test_it_gives_an_offline_host_the_new_policy_when_it_reconnects(stack):
    agent = stack.new_agent("late-host")
    assert agent.register().returncode == 0
    group_id = stack.api.get("/api/v1/groups/").json()["results"][0]["id"]
    assert stack.api.patch(f"/api/v1/groups/{group_id}/", json={"channel": "alpha"}).status_code == 200
    agent.start()
    wait_for(lambda: "GROUP=alpha" in agent.update_conf(), timeout=120, what="policy applied on reconnect")
    wait_for(lambda: stack.host(agent.host_id)["policy_applied"], timeout=60, what="ack recorded")


def test_agent_register_against_the_real_server_exits_with_a_code_per_refusal_and_nothing_is_stored(stack):
    """The agent's exit codes (DESIGN §3) from the server's real answers, through uvicorn."""
    from datetime import timedelta

    from django.utils import timezone

    from agent import config as cfg
    from fleetweb.fleet.models import EnrollmentToken

    group_id = stack.api.get("/api/v1/groups/").json()["results"][0]["id"]

    def issue(**kw) -> dict:
        r = stack.api.post("/api/v1/tokens/", json={"group": group_id, **kw})
        assert r.status_code == 201, r.text
        return r.json()

    once = issue(max_uses=1, name="single use")
    revoked = issue(name="revoked")
    assert stack.api.post(f"/api/v1/tokens/{revoked['id']}/revoke").status_code == 200
    expired = issue(name="expired")
    EnrollmentToken.objects.filter(pk=expired["id"]).update(expires_at=timezone.now() - timedelta(minutes=1))

    assert stack.new_agent("first").register(once["token"]).returncode == 0
    hosts_before = stack.api.get("/api/v1/hosts/").json()["count"]
    cases = [("used up", once["token"], cfg.EXIT_TOKEN_EXHAUSTED, "used up"),
             ("revoked", revoked["token"], cfg.EXIT_TOKEN_REVOKED, "revoked"),
             ("expired", expired["token"], cfg.EXIT_TOKEN_EXPIRED, "expired"),
             ("wrong", once["token"][:-4] + "AAAA", cfg.EXIT_TOKEN_INVALID, "not valid")]
    for name, token, code, words in cases:
        agent = stack.new_agent(f"refused-{name.replace(' ', '-')}")
        res = agent.register(token)
        assert res.returncode == code, (name, res.returncode, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and words in res.stderr, (name, res.stderr)
        assert not (agent.state_dir / "agent.json").exists()
    assert stack.api.get("/api/v1/hosts/").json()["count"] == hosts_before
    uses = {t["id"]: t["uses"] for t in stack.api.get("/api/v1/tokens/").json()["results"]}
    assert (uses[once["id"]], uses[revoked["id"]], uses[expired["id"]]) == (1, 0, 0)
