"""``agent lock status|lock|unlock|set-max`` (locksmithctl's job) against a real etcd."""
from __future__ import annotations

import json
import uuid

from agent import config as cfg
from agent.etcd import make_client
from scripts.services import free_port, test_etcd_endpoints

from .conftest import run_agent


def lock(*args, state_dir=None):
    extra = ["--state-dir", str(state_dir)] if state_dir else ["--state-dir", "/nonexistent-state"]
    return run_agent("lock", *args, *extra)


def test_it_does_what_locksmithctl_does_with_explicit_options():
    ep = ",".join(test_etcd_endpoints())
    opts = ["--endpoints", ep, "--group", "prod/database", "--prefix", f"fleet/t{uuid.uuid4().hex[:8]}/"]
    res = lock("status", *opts)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "Available: 1\nMax: 1\n"
    assert lock("set-max", "2", *opts).stdout == "Old-Max: 1\nMax: 2\n"  # what locksmithctl set-max prints
    assert lock("lock", "m-b", *opts).returncode == 0
    assert lock("lock", "m-a", *opts).returncode == 0
    assert lock("lock", "m-a", *opts).returncode == 0          # a second lock by a holder succeeds
    res = lock("lock", "m-c", *opts)
    assert res.returncode == cfg.EXIT_ERROR and "no_slots" in res.stderr
    assert lock("status", *opts).stdout == "Available: 0\nMax: 2\n\nMACHINE ID\nm-a\nm-b\n"
    assert lock("unlock", "nobody", *opts).returncode == 0
    assert lock("unlock", "m-a", *opts).returncode == 0
    res = lock("status", "--json", *opts)
    data = json.loads(res.stdout)
    assert data["semaphore"] == 1 and data["max"] == 2 and data["holders"] == ["m-b"]
    assert data["key"].endswith("coreos.com/updateengine/rebootlock/groups/prod%2Fdatabase/semaphore")


def test_it_defaults_to_the_policy_and_machine_id_in_the_state_dir(registered):
    config = registered()
    prefix = f"fleet/t{uuid.uuid4().hex[:8]}/"
    cfg.store_etcd_policy(config.state_dir, {"revision": 1, "group": "web", "channel": "stable",
                                             "reboot_strategy": "etcd-lock", "etcd_endpoints": test_etcd_endpoints(),
                                             "etcd_prefix": prefix, "max_concurrent_reboots": 3})
    res = lock("lock", state_dir=config.state_dir)
    assert res.returncode == 0, res.stderr
    value, _ = make_client(test_etcd_endpoints()).get(f"{prefix}coreos.com/updateengine/rebootlock/groups/web/semaphore")
    assert json.loads(value) == {"semaphore": 2, "max": 3, "holders": [config.machine_id]}
    assert lock("status", state_dir=config.state_dir).stdout.endswith(f"MACHINE ID\n{config.machine_id}\n")
    assert lock("unlock", state_dir=config.state_dir).returncode == 0
    assert lock("status", state_dir=config.state_dir).stdout == "Available: 3\nMax: 3\n"


def test_it_names_the_problem_when_etcd_is_missing_or_down():
    res = lock("status")
    assert res.returncode == cfg.EXIT_ERROR and "no etcd endpoints" in res.stderr
    res = lock("status", "--endpoints", f"http://127.0.0.1:{free_port()}")
    assert res.returncode == cfg.EXIT_SERVER_UNREACHABLE and "etcd_unavailable" in res.stderr
    assert "Traceback" not in res.stderr
