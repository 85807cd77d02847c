"""End to end: a group cloud-config PUT through the API reaches a real agent, which applies it
under its --root and reports the revision; the server then shows the host current."""
from __future__ import annotations

import os

from tests.e2e.conftest import wait_for

DOC = """#cloud-config
users:
  - name: deploy
    ssh_authorized_keys: [ssh-ed25519 AAAAE2E deploy@e2e]
write_files:
  - path: /etc/motd
    content: managed by fleetweb
    permissions: '0640'
coreos:
  update:
    reboot_strategy: off
  units:
    - name: web.service
      command: start
      enable: true
      content: |
        [Service]
        ExecStart=/usr/bin/docker run --rm -p 80:80 nginx
        [Install]
        WantedBy=multi-user.target
"""


def test_a_group_cloud_config_is_applied_and_reported(stack):
    agent = stack.spawn_agent("cc-1")
    wait_for(lambda: stack.host(agent.host_id)["online"], timeout=120, what="the agent online")
    group = stack.api.get("/api/v1/groups/").json()["results"][0]
    r = stack.api.put(f"/api/v1/groups/{group['id']}/cloud-config", json={"content": DOC})
    assert r.status_code == 200, r.text
    bad = stack.api.put(f"/api/v1/groups/{group['id']}/cloud-config",
                        json={"content": "#cloud-config\ncoreos:\n  units:\n    - name: x\n      command: lol\n"})
    assert bad.status_code == 400 and bad.json()["entries"][0]["line"] == 5

    def effective():
        body = stack.api.get(f"/api/v1/hosts/{agent.host_id}/cloud-config/effective").json()
        return body if body["apply_state"] == "current" else None

    body = wait_for(effective, timeout=120, what=f"the host reporting the revision (log: {agent.log})")
    assert body["applied_revision"] == body["revision"] > 0
    root = agent.root
    assert (root / "etc/motd").read_text() == "managed by fleetweb"
    assert oct((root / "etc/motd").stat().st_mode & 0o777) == "0o640"
    assert "deploy:x:1000:1000::/home/deploy:/bin/bash" in (root / "etc/passwd").read_text()
    keys = root / "home/deploy/.ssh/authorized_keys"
    assert keys.read_text() == "ssh-ed25519 AAAAE2E deploy@e2e\n" and oct(keys.stat().st_mode & 0o777) == "0o600"
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/web.service") == \
        "/etc/systemd/system/web.service"
    assert "REBOOT_STRATEGY=off" in agent.update_conf()
    calls = (agent.state_dir / "systemctl.log").read_text()
    assert '"start", "web.service"' in calls
