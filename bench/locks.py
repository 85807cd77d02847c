#!/usr/bin/env python3
"""Reboot-lock benchmark: our semaphore (agent/locksmith.py) on a real etcd.

1. acquire+release latency (p50/p99) of ``Locksmith.lock`` + ``Locksmith.unlock`` against a bare
   etcd transaction round trip (one compare-and-put) measured in the same run, as ratios;
2. a rolling reboot of N simulated hosts with max=M (one thread per host, each polls the lock with
   jittered backoff, "reboots" for --reboot seconds, then unlocks) against the ideal
   ceil(N/M) x reboot time; an independent counter checks no more than M ever held it.

    .venv/bin/python bench/locks.py [--endpoints http://127.0.0.1:2379] [--iterations 500]
        [--hosts 100] [--max 5] [--reboot 0.2]

Figures go to stdout as name=value lines; without --endpoints a throw-away etcd is started on free
ports and stopped at exit.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.etcd import make_client  # noqa: E402
from agent.locksmith import NO_SLOTS, LockError, Locksmith  # noqa: E402
from bench._common import emit, emit_ratio, log, pct  # noqa: E402


def latency(client, prefix: str, iterations: int) -> None:
    smith = Locksmith(client, group="latency", prefix=prefix, default_max=1)
    smith.get()  # create the key outside the measurement
    tx = client.transactions
    bare_key = f"{prefix}bare"
    for _ in range(20):  # warm-up both paths (channels, token)
        smith.unlock(smith.lock("warm").holders[0])
        client.transaction(compare=[tx.mod(bare_key) < 2**62], success=[tx.put(bare_key, "x")], failure=[])
    ours, bare = [], []
    for i in range(iterations):
        t0 = time.perf_counter()
        smith.lock("bench-host")
        smith.unlock("bench-host")
        ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()  # one compare-and-put transaction: the floor of any CAS write
        client.transaction(compare=[tx.mod(bare_key) < 2**62], success=[tx.put(bare_key, str(i))], failure=[])
        bare.append(time.perf_counter() - t0)
    for name, values in (("semaphore_acquire_release", ours), ("etcd_txn_roundtrip", bare)):
        emit(f"{name}_p50_ms", pct(values, 50) * 1000)
        emit(f"{name}_p99_ms", pct(values, 99) * 1000)
    emit_ratio("semaphore_vs_txn_p50_ratio", pct(ours, 50), pct(bare, 50))
    emit_ratio("semaphore_vs_txn_p99_ratio", pct(ours, 99), pct(bare, 99))


def rolling_reboot(endpoints, prefix: str, hosts: int, max_: int, reboot: float) -> None:
    group = "rolling"
    admin = make_client(endpoints)
    Locksmith(admin, group=group, prefix=prefix, default_max=max_).set_max(max_)
    holding = 0
    peak = 0
    counter = threading.Lock()
    done = []
    errors = []
    start = threading.Barrier(hosts + 1)

    def host(i: int) -> None:
        nonlocal holding, peak
        client = make_client(endpoints)
        smith = Locksmith(client, group=group, prefix=prefix, default_max=max_)
        holder = uuid.uuid5(uuid.NAMESPACE_DNS, f"bench-{i}").hex
        delay = 0.01
        start.wait()
        try:
            while True:
                try:
                    smith.lock(holder)
                    break
                except LockError as exc:
                    if exc.code != NO_SLOTS:
                        raise
                    time.sleep(random.uniform(0.5, 1.0) * delay)
                    delay = min(delay * 1.5, 0.1)
            with counter:
                holding += 1
                peak = max(peak, holding)
            time.sleep(reboot)  # the simulated reboot
            with counter:
                holding -= 1
            smith.unlock(holder)
            done.append(time.perf_counter())
        except Exception as exc:  # reported below: a benchmark must not hide failures
            errors.append(repr(exc))
        finally:
            client.close()

    threads = [threading.Thread(target=host, args=(i,), daemon=True) for i in range(hosts)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    total = (max(done) - t0) if done else float("nan")
    ideal = math.ceil(hosts / max_) * reboot
    final = Locksmith(admin, group=group, prefix=prefix).get()
    admin.close()
    emit("rolling_hosts", hosts)
    emit("rolling_max", max_)
    emit("rolling_reboot_s", reboot)
    emit("rolling_total_s", total)
    emit("rolling_ideal_s", ideal)
    emit_ratio("rolling_total_vs_ideal_ratio", total, ideal)
    emit("rolling_peak_holders", peak)
    emit("rolling_rebooted", len(done))
    emit("rolling_errors", len(errors))
    emit("rolling_final_free", final.free)
    if errors:
        log("errors:", *errors[:5])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoints", help="comma list; default: a throw-away etcd")
    parser.add_argument("--iterations", type=int, default=500)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--max", type=int, default=5)
    parser.add_argument("--reboot", type=float, default=0.2, help="simulated reboot time, seconds")
    args = parser.parse_args(argv)
    server = None
    if args.endpoints:
        endpoints = args.endpoints.split(",")
    else:
        from scripts.services import start_etcd

        server = start_etcd()
        endpoints = [server.url]
        log(f"etcd on {server.url}")
    prefix = f"bench/{uuid.uuid4().hex[:8]}/"
    try:
        client = make_client(endpoints)
        try:
            latency(client, prefix, args.iterations)
        finally:
            client.close()
        rolling_reboot(endpoints, prefix, args.hosts, args.max, args.reboot)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
