#!/usr/bin/env python
"""What the request lanes keep (issue 10 §1): views run on threads that live, so each keeps its
database connection.  Measures the host list (GET /api/v1/hosts/, one page) against two web
processes in the same run, sample for sample alternated: one as shipped (CONN_MAX_AGE 60), one
that opens a connection per request (CONN_MAX_AGE 0, what a new thread per request costs, Django's
default under ASGI).

    .venv/bin/python bench/lanes.py [--hosts 1000] [--samples 200] [--database-url postgres://...]

Prints name=value lines (bench/README.md); nothing here asserts on timings.
"""
from __future__ import annotations

import argparse
import asyncio
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
    free_port,
    http_request,
    install_cleanup,
    loadavg,
    log,
    new_workdir,
    pct,
    seed_hosts,
    setup_django,
    start_uvicorn,
    stop,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = ap.parse_args()

    install_cleanup()
    workdir = new_workdir("lanes")
    db = Database(args.database_url, workdir)
    db.create()
    env = bench_env(db.url, args.redis_url, workdir)
    setup_django(env)
    emit("lanes_database", db.kind)
    emit("lanes_loadavg_start", loadavg())
    boot = bootstrap("lanes-bench", "bench")
    seed_hosts(boot["org"], boot["group"], args.hosts, credentials=False)
    headers = {"Authorization": f"Bearer {boot['api_key']}", "Accept": "application/json"}
    servers = {}
    try:
        for name, age in (("persistent", 60), ("per_request", 0)):
            port = free_port()
            servers[name] = (port, start_uvicorn({**env, "CONN_MAX_AGE": str(age)}, port, workdir / f"{name}.log"))

        async def probe():
            times = {name: [] for name in servers}
            for i in range(args.samples + 5):
                for name, (port, _proc) in servers.items():
                    t = time.monotonic()
                    status, body = await http_request(port, "GET", "/api/v1/hosts/?page=1", headers=headers)
                    if status != 200:
                        raise RuntimeError(f"{name}: GET /api/v1/hosts/ -> {status}: {body[:200]!r}")
                    if i >= 5:  # warm-up: every lane has opened its connection
                        times[name].append(time.monotonic() - t)
            return times

        log(f"host list, {args.hosts} hosts, {args.samples} samples per server ...")
        times = asyncio.run(probe())
        for name, values in times.items():
            emit(f"lanes_hosts_list_{name}_p50_ms", round(pct(values, 50) * 1000, 2))
            emit(f"lanes_hosts_list_{name}_p99_ms", round(pct(values, 99) * 1000, 2))
        emit_ratio("ratio_lanes_per_request_vs_persistent_p50", pct(times["per_request"], 50),
                   pct(times["persistent"], 50))
        emit("lanes_loadavg_end", loadavg())
    finally:
        for _port, proc in servers.values():
            stop(proc)


if __name__ == "__main__":
    main()
