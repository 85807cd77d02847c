"""Many hosts want to reboot at once: the semaphore never lets more than max hold it (real etcd,
single node and a 3-member cluster whose leader is killed mid-way).  An independent watcher reads
every revision of the key from revision 1 and decodes each value."""
from __future__ import annotations

import json
import random
import threading
import time
import uuid

import pytest

from agent.etcd import make_client
from agent.locksmith import LockError, Locksmith
from scripts.services import test_etcd_endpoints
from tests.etcd_cluster import EtcdCluster


def history(endpoints, key) -> list[dict]:
    """Every value the key ever had, in revision order (an etcd watch from the key's creation: the
    test etcd is shared, and another test may have compacted its history before this key existed)."""
    client = make_client(endpoints)
    try:
        value, meta = client.get(key)
        last = meta.mod_revision
        events, cancel = client.watch(key, start_revision=meta.create_revision)
        values = []
        for event in events:
            values.append(json.loads(event.value))
            if event.mod_revision >= last:
                break
        cancel()
        return values
    finally:
        client.close()


def host(endpoints, prefix, name, results, max_, after_lock=None, deadline=240.0):
    """One host: take the lock (retrying), 'reboot', release (retrying), like the agent does."""
    client = make_client(endpoints, timeout=2)
    ls = Locksmith(client, "web", prefix, default_max=max_)
    end = time.monotonic() + deadline
    try:
        while True:
            try:
                ls.lock(name)
                break
            except LockError as exc:
                if time.monotonic() > end:
                    results[name] = f"never locked: {exc}"
                    return
                time.sleep(random.uniform(0.005, 0.03) if exc.code == "no_slots" else 0.1)
        if after_lock:
            after_lock()
        time.sleep(random.uniform(0.01, 0.04))            # the reboot
        while True:
            try:
                ls.unlock(name)
                break
            except LockError as exc:
                if time.monotonic() > end:
                    results[name] = f"never unlocked: {exc}"
                    return
                time.sleep(0.1)
        results[name] = "rebooted"
    finally:
        client.close()


def run_hosts(endpoints, prefix, n, max_, after_lock=None) -> dict:
    results: dict = {}
    threads = [threading.Thread(target=host, args=(endpoints, prefix, f"machine-{i:02d}", results, max_, after_lock))
               for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return results


def check(values: list[dict], max_: int, n: int) -> None:
    assert values, "the watcher saw nothing"
    peak = max(len(v["holders"] or []) for v in values)
    assert peak <= max_, f"{peak} holders at once"
    for v in values:
        assert v["max"] == max_ and v["semaphore"] == max_ - len(v["holders"] or [])
        assert v["holders"] == sorted(v["holders"])
    assert peak == max_          # the contention was real
    assert values[-1] == {"semaphore": max_, "max": max_, "holders": []}
    locked = {h for v in values for h in v["holders"]}
    assert len(locked) == n


def test_fifty_hosts_with_max_two_never_exceed_two_holders():
    endpoints = test_etcd_endpoints()
    prefix = f"test/{uuid.uuid4().hex}/"
    results = run_hosts(endpoints, prefix, 50, 2)
    assert results == {f"machine-{i:02d}": "rebooted" for i in range(50)}
    check(history(endpoints, Locksmith(None, "web", prefix).key), 2, 50)


@pytest.fixture(scope="module")
def cluster():
    with EtcdCluster(3) as c:
        yield c


def test_killing_the_leader_during_contention_never_exceeds_max_and_all_finish(cluster):
    prefix = f"test/{uuid.uuid4().hex}/"
    key = Locksmith(None, "web", prefix).key
    leader = cluster.leader()
    count = {"locks": 0}
    killed = threading.Event()
    guard = threading.Lock()

    def after_lock():
        with guard:
            count["locks"] += 1
            if count["locks"] == 8 and not killed.is_set():
                killed.set()
                cluster.kill(leader)

    results = run_hosts(cluster.endpoints, prefix, 30, 2, after_lock)
    assert killed.is_set()
    assert results == {f"machine-{i:02d}": "rebooted" for i in range(30)}
    survivors = [m.client_url for m in cluster.members if m.alive()]
    assert len(survivors) == 2 and cluster.leader() is not leader
    check(history(survivors, key), 2, 30)
