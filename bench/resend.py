#!/usr/bin/env python3
"""Reconciliation's resends (issue 10 §3): what a lost switch of a large group costs the agents'
database thread.  After Redis was down during a channel switch, every agent of the group is behind
and its next heartbeat asks for its policy again; so does a heartbeat whose reconciliation read
raced the switch's broadcast.

Measures ``Host.objects.resend_frames`` for N hosts read in batches of 1,000 (as the ResendBatcher
runs them) against the same N read one host at a time (the earlier design: a read per resend), in
the same run, as a ratio.

    .venv/bin/python bench/resend.py [--hosts 2000] [--database-url postgres://postgres@127.0.0.1:5432/fw_bench]

Without --database-url a fresh SQLite file is used.  Figures go to stdout as name=value lines.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DEFAULT_REDIS,
    Database,
    bench_env,
    bootstrap,
    emit,
    emit_ratio,
    install_cleanup,
    log,
    new_workdir,
    seed_hosts,
    setup_django,
)

BATCH = 1000  # fleetweb.fleet.writer.Batcher.limit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=2000)
    ap.add_argument("--database-url", default=None)
    args = ap.parse_args()
    install_cleanup()
    workdir = new_workdir("resend")
    db = Database(args.database_url, workdir)
    db.create()
    setup_django(bench_env(db.url, DEFAULT_REDIS, workdir))
    from fleetweb.fleet.models import Host

    emit("resend_database", db.kind)
    boot = bootstrap("resend", "bench")
    log(f"seeding {args.hosts} hosts ...")
    seed_hosts(boot["org"], boot["group"], args.hosts, credentials=False)
    ids = list(Host.objects.values_list("pk", flat=True))
    Host.objects.resend_frames([(pk, True, None) for pk in ids[:50]])  # warm-up

    t0 = time.perf_counter()
    for i in range(0, len(ids), BATCH):
        frames = Host.objects.resend_frames([(pk, True, None) for pk in ids[i:i + BATCH]])
        assert all(len(f) == 1 for f in frames)
    batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    for pk in ids:
        Host.objects.resend_frames([(pk, True, None)])
    single = time.perf_counter() - t0

    emit(f"resend_{len(ids)}_batched_s", batched)
    emit(f"resend_{len(ids)}_one_by_one_s", single)
    emit("resend_batched_ms_per_host", 1000 * batched / len(ids))
    emit_ratio(f"ratio_resend_{len(ids)}_one_by_one_vs_batched", single, batched)


if __name__ == "__main__":
    main()
