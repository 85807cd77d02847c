#!/usr/bin/env python
"""Enrollment, check-in and host-list figures against one uvicorn process, optionally next to the
OpenWISP peer (``../shared/peers/openwisp/run.sh`` relative to the repository root) measured in the
same run.

    .venv/bin/python bench/enroll.py [--duration 15] [--concurrency 32]
                                     [--checkin-agents 32,1000] [--list-sizes 1000,10000,100000]
                                     [--database-url postgres://...] [--peer]

Prints name=value lines on stdout (see bench/README.md), progress on stderr.  Not a test.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    DEFAULT_REDIS,
    ORIG_ENV,
    Database,
    bench_env,
    bootstrap,
    cpu_seconds,
    emit,
    emit_ratio,
    free_port,
    http_request,
    install_cleanup,
    loadavg,
    log,
    new_workdir,
    pct,
    raise_nofile,
    seed_hosts,
    setup_django,
    start,
    start_uvicorn,
    stop,
    tail,
)
from fanin import Swarm, wait_until  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PEER = REPO.parent / "shared" / "peers" / "openwisp" / "run.sh"


# -- HTTP load --------------------------------------------------------------------------------
def load(port: int, make_request, *, concurrency: int, duration: float, ok_status=(200, 201)) -> dict:
    """`concurrency` clients, each sending requests back to back for `duration` seconds (fresh
    connection per request, Connection: close, as an agent's curl does)."""
    lat: list[float] = []
    errors: dict[str, int] = {}

    async def client(deadline: float) -> None:
        while time.monotonic() < deadline:
            method, path, headers, body = make_request()
            t = time.monotonic()
            try:
                status, data = await http_request(port, method, path, headers=headers, body=body, timeout=30)
            except Exception as exc:  # counted, not fatal
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            if status in ok_status:
                lat.append(time.monotonic() - t)
            else:
                key = f"http_{status}"
                if key not in errors:
                    log(f"first {key}: {data[:300]!r}")
                errors[key] = errors.get(key, 0) + 1

    async def run() -> float:
        t0 = time.monotonic()
        await asyncio.gather(*(client(t0 + duration) for _ in range(concurrency)))
        return time.monotonic() - t0

    try:
        import uvloop

        wall = uvloop.run(run())
    except ImportError:
        wall = asyncio.run(run())
    return {"per_s": len(lat) / wall, "n": len(lat), "p50_ms": 1000 * pct(lat, 50),
            "p99_ms": 1000 * pct(lat, 99), "errors": sum(errors.values()), "error_kinds": errors, "wall": wall}


def emit_load(prefix: str, r: dict) -> None:
    emit(f"{prefix}_per_s", round(r["per_s"], 1))
    emit(f"{prefix}_p50_ms", round(r["p50_ms"], 1))
    emit(f"{prefix}_p99_ms", round(r["p99_ms"], 1))
    emit(f"{prefix}_errors", r["errors"])
    if r["errors"]:
        log(f"{prefix} errors: {r['error_kinds']}")


def with_cpu(pid: int, prefix: str, fn):
    t, c, me = time.monotonic(), cpu_seconds(pid), time.process_time()
    r = fn()
    wall = time.monotonic() - t
    emit(f"{prefix}_cpu_server_pct", round(100 * (cpu_seconds(pid) - c) / wall, 1))
    emit(f"{prefix}_cpu_client_pct", round(100 * (time.process_time() - me) / wall, 1))
    return r


# -- phases -----------------------------------------------------------------------------------
def enrollment(port: int, pid: int, token: str, args) -> dict:
    def req():
        body = json.dumps({"token": token, "machine_id": uuid.uuid4().hex,
                           "hostname": f"enroll-{uuid.uuid4().hex[:10]}"}).encode()
        return "POST", "/api/v1/agents/register", {"Content-Type": "application/json"}, body

    log(f"enroll: c={args.concurrency} for {args.duration} s ...")
    r = with_cpu(pid, "enroll", lambda: load(port, req, concurrency=args.concurrency, duration=args.duration,
                                             ok_status=(201,)))
    emit_load("enroll", r)
    emit("enroll_hosts_registered", r["n"])
    log("enroll: c=1 for 3 s (service time) ...")
    r1 = load(port, req, concurrency=1, duration=3, ok_status=(201,))
    emit("enroll_c1_p50_ms", round(r1["p50_ms"], 1))
    emit("enroll_c1_p99_ms", round(r1["p99_ms"], 1))
    return r


def checkins(port: int, pid: int, org: str, group: str, n: int, workdir: Path, args) -> float | None:
    """n connected agents send status frames back to back for --checkin-duration seconds; the
    rate counts only frames persisted (sum of Host.status_seq reaches the sum of sequence numbers sent)."""
    from django.db.models import Sum

    from fleetweb.fleet.models import Host

    p = f"checkin_{n}"
    secrets = seed_hosts(org, group, n, prefix=f"c{n}-")
    from fleetweb.fleet.models import HostCredential

    hosts = Host.objects.filter(pk__in=HostCredential.objects.filter(
        lookup__in=[s.split("_")[1] for s in secrets]).values("host_id"))
    swarm = Swarm(workdir, f"checkin-{n}")
    try:
        r = swarm.call(cmd="connect", url=f"ws://127.0.0.1:{port}/ws/agent/", secrets=secrets,
                       concurrency=256, timeout=120)
        connected = r["connected"]
        r = swarm.call(cmd="hello", timeout=180)
        if r["answered"] < connected:
            log(f"{p}: only {r['answered']}/{connected} hellos answered: {r.get('first_error')}")
        wait_until(lambda: hosts.filter(policy_revision__gt=0).count() >= connected, 120, 0.1)
        rate = min(args.checkin_agent_rate, args.checkin_offered / connected)
        log(f"{p}: {connected} agents send {rate:.1f} status frames/s each for {args.checkin_duration} s ...")
        total = lambda: hosts.aggregate(s=Sum("status_seq"))["s"] or 0  # noqa: E731
        t0, c0, a0 = time.monotonic(), cpu_seconds(pid), swarm.cpu()
        swarm.send(cmd="status_for", duration=args.checkin_duration, rate=rate)
        time.sleep(min(2.0, args.checkin_duration / 4))
        s1, t1 = total(), time.monotonic()
        r = swarm.recv()
        s2, t2 = total(), time.monotonic()
        target = r["seq_sum"]
        _, t_done = wait_until(lambda: total() >= target, args.checkin_drain, 0.05)
        wall = (t_done or time.monotonic()) - t0
        persisted = total()
        emit(f"{p}_agents", connected)
        emit(f"{p}_offered_per_s", round(r["sent"] / r["send_s"], 1))
        emit(f"{p}_sent", r["sent"])
        emit(f"{p}_persisted", persisted)
        emit(f"{p}_steady_per_s", round((s2 - s1) / (t2 - t1), 1))
        emit(f"{p}_per_s", round(persisted / wall, 1) if t_done else "timeout")
        emit(f"{p}_drain_s", round(wall - r["send_s"], 2) if t_done else "timeout")
        emit(f"{p}_cpu_server_pct", round(100 * (cpu_seconds(pid) - c0) / wall, 1))
        emit(f"{p}_cpu_client_pct", round(100 * (swarm.cpu() - a0) / wall, 1))
        emit(f"{p}_errors", sum(r["errors"].values()) + (n - connected))
        if r.get("first_error"):
            log(f"{p}: agent-side errors {r['errors']}; first: {r['first_error']}")
        return persisted / wall if t_done else None
    finally:
        swarm.close()


def hosts_list(port: int, sizes: list[int], samples: int) -> dict:
    from django.db import connection

    from fleetweb.tenancy.models import Organization

    boot = bootstrap(f"list-{uuid.uuid4().hex[:6]}", "bench")
    org = Organization.objects.get(slug=boot["org"])
    have = 0
    out = {}
    headers = {"Authorization": f"Bearer {boot['api_key']}", "Accept": "application/json"}
    for n in sizes:
        log(f"hosts list: seeding up to {n} hosts ...")
        seed_hosts(boot["org"], boot["group"], n - have, credentials=False, prefix=f"l{n}-")
        have = n
        if connection.vendor == "postgresql":
            # What autovacuum does after a bulk insert (PostgreSQL 13+ vacuums on inserts too): stale
            # statistics make the planner sort 10,000 rows instead of using the index, and without the
            # visibility map the paginator's COUNT(*) reads the heap (21 ms instead of 4 ms at 100k).
            with connection.cursor() as cur:
                cur.execute("VACUUM ANALYZE fleet_host")

        async def probe():
            times = []
            for i in range(samples + 3):
                t = time.monotonic()
                status, body = await http_request(port, "GET", "/api/v1/hosts/?page=1", headers=headers)
                if status != 200:
                    raise RuntimeError(f"GET /api/v1/hosts/ -> {status}: {body[:200]!r}")
                if i >= 3:
                    times.append(time.monotonic() - t)
            return times, json.loads(body)["count"]

        times, count = asyncio.run(probe())
        assert count == n and org, f"the list counts {count}, expected {n}"
        out[n] = 1000 * pct(times, 50)
        emit(f"hosts_list_{n}_p50_ms", round(out[n], 1))
        emit(f"hosts_list_{n}_p99_ms", round(1000 * pct(times, 99), 1))
    if len(sizes) > 1:
        emit_ratio(f"hosts_list_ratio_{sizes[-1]}_vs_{sizes[0]}", out[sizes[-1]], out[sizes[0]])
    return out


def run_peer(workdir: Path) -> dict:
    log(f"peer: running {PEER} (about 2 min) ...")
    proc = start(["bash", PEER], stdout=subprocess.PIPE, log_path=workdir / "peer.log",
                 cwd=PEER.parent, env=ORIG_ENV)
    values = {}
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if "=" in line and " " not in line.split("=", 1)[0]:
                k, v = line.split("=", 1)
                values[k] = v
        proc.wait(600)
    finally:
        stop(proc)
    if proc.returncode not in (0, None):
        log(f"peer exited with {proc.returncode}:\n{tail(workdir / 'peer.log')}")
    emit("peer_exit_code", proc.returncode)
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=15.0, help="seconds of enrollment load")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--checkin-agents", default="32,1000", help="comma list of connected agents")
    ap.add_argument("--checkin-duration", type=float, default=10.0)
    ap.add_argument("--checkin-offered", type=float, default=2000.0,
                    help="total status frames/s the agents offer (split across them)")
    ap.add_argument("--checkin-agent-rate", type=float, default=20.0,
                    help="at most this many frames/s per agent (the writer's 50 ms tick allows ~20)")
    ap.add_argument("--checkin-drain", type=float, default=90.0, help="seconds to wait for the backlog")
    ap.add_argument("--list-sizes", default="1000,10000,100000")
    ap.add_argument("--list-samples", type=int, default=30)
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    ap.add_argument("--peer", action="store_true", help="also run the OpenWISP peer (about 2 min)")
    args = ap.parse_args()
    if args.peer and not PEER.is_file():
        ap.error(f"--peer: the OpenWISP peer script {PEER} does not exist (it is looked for at "
                 f"../shared/peers/openwisp/run.sh relative to the repository, {REPO})")

    install_cleanup()
    raise_nofile()
    workdir = new_workdir("enroll")
    db = Database(args.database_url, workdir)
    db.create()
    port = free_port()
    env = bench_env(db.url, args.redis_url, workdir, FLEET_PUBLIC_URL=f"http://127.0.0.1:{port}")
    setup_django(env)
    emit("enroll_database", db.kind)
    emit("enroll_loadavg_start", loadavg())
    boot = bootstrap("enroll-bench", "bench")
    server_log = workdir / "server.log"
    server = start_uvicorn(env, port, server_log)
    ours: dict = {}
    try:
        ours["enroll"] = enrollment(port, server.pid, boot["enrollment_token"], args)
        for n in [int(x) for x in args.checkin_agents.split(",") if x.strip()]:
            ours[f"checkin_{n}"] = checkins(port, server.pid, boot["org"], boot["group"], n, workdir, args)
        ours["list"] = hosts_list(port, [int(x) for x in args.list_sizes.split(",") if x.strip()],
                                  args.list_samples)
        text = server_log.read_text(errors="replace")
        emit("enroll_server_log_errors", text.count("Traceback"))
        emit("enroll_loadavg_end", loadavg())
    finally:
        stop(server)
    if not args.peer:
        return
    peer = run_peer(workdir)
    for key in ("register_per_s", "register_p50_ms", "register_p99_ms", "checksum_per_s", "report_status_per_s",
                "admin_changelist_1000_p50_ms", "admin_changelist_10000_p50_ms"):
        emit(f"peer_{key}", peer.get(key, "missing"))
    f = lambda k: float(peer[k]) if k in peer else None  # noqa: E731
    emit_ratio("ratio_enroll_vs_peer", ours["enroll"]["per_s"], f("register_per_s"))
    best = max([v for k, v in ours.items() if k.startswith("checkin_") and v] or [0]) or None
    emit_ratio("ratio_checkin_vs_peer_checksum", best, f("checksum_per_s"))
    emit_ratio("ratio_checkin_vs_peer_report_status", best, f("report_status_per_s"))
    for n in (1000, 10000):
        if n in ours["list"]:
            emit_ratio(f"ratio_hosts_list_{n}_vs_peer_changelist", ours["list"][n],
                       f(f"admin_changelist_{n}_p50_ms"))


if __name__ == "__main__":
    os.chdir(REPO)
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: stopping everything this bench started")
        sys.exit(130)
