#!/usr/bin/env python
"""Websocket fan-in: N simulated agents against one uvicorn process, and the same workload
against a bare `websockets` server (the baseline, measured in the same run).

    .venv/bin/python bench/fanin.py [--sizes 100,1000,10000] [--status-frames K]
                                    [--database-url postgres://postgres@127.0.0.1:5432/x]

Prints name=value lines on stdout (see bench/README.md), progress on stderr.  Not a test: nothing
here asserts on timings.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BIN,
    DEFAULT_REDIS,
    Database,
    bench_env,
    bootstrap,
    cpu_seconds,
    emit,
    emit_ratio,
    free_port,
    install_cleanup,
    loadavg,
    log,
    new_workdir,
    raise_nofile,
    rss_kib,
    seed_hosts,
    setup_django,
    start,
    start_uvicorn,
    stop,
    tail,
)

HERE = Path(__file__).resolve().parent


class Swarm:
    """The agents process (bench/_agents.py), driven over a pipe."""

    def __init__(self, workdir: Path, tag: str):
        self.proc = start([BIN / "python", HERE / "_agents.py"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, log_path=workdir / f"agents-{tag}.log")

    def send(self, **cmd) -> None:
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def recv(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the agents process exited ({self.proc.poll()})")
        return json.loads(line)

    def call(self, **cmd) -> dict:
        self.send(**cmd)
        return self.recv()

    def close(self) -> dict | None:
        """Ask the agents to close their sockets (10 s at most: a command may still be pending), then stop."""
        import select

        try:
            self.send(cmd="close")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if select.select([self.proc.stdout], [], [], 0.5)[0]:
                    reply = self.recv()
                    if "closed" in reply:
                        return reply
            return None
        except Exception:
            return None
        finally:
            stop(self.proc)

    def cpu(self) -> float:
        return cpu_seconds(self.proc.pid)


def wait_until(predicate, timeout: float, interval: float = 0.05):
    """Poll predicate() until it returns a true value; returns (value, monotonic time) or (last, None)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last is True or (last and last is not False):
            return last, time.monotonic()
        time.sleep(interval)
    return last, None


def phase_cpu(pid_server: int, swarm: Swarm):
    t, s, c = time.monotonic(), cpu_seconds(pid_server), swarm.cpu()

    def done(prefix: str, tag: str) -> None:
        wall = time.monotonic() - t
        emit(f"{prefix}_{tag}_cpu_server_pct", round(100 * (cpu_seconds(pid_server) - s) / wall, 1))
        emit(f"{prefix}_{tag}_cpu_client_pct", round(100 * (swarm.cpu() - c) / wall, 1))

    return done


def count_errors(reply: dict) -> int:
    return sum(reply.get("errors", {}).values())


# -- fleetweb ---------------------------------------------------------------------------------
def run_fleet(n: int, k: int, env: dict, workdir: Path, args) -> dict:
    from fleetweb.fleet.models import Group, Host
    from fleetweb.updates.models import Channel

    p = f"fanin_{n}"
    res: dict = {}
    limit = max(240.0, n / 20)  # seconds per phase: 10,000 agents need minutes on this machine
    boot = bootstrap(f"fanin-{n}-{int(time.time())}", "bench")
    log(f"[fleet N={n}] seeding {n} hosts ...")
    secrets = seed_hosts(boot["org"], boot["group"], n)
    group = Group.objects.select_related("channel").get(organization__slug=boot["org"], slug=boot["group"])
    hosts = Host.objects.filter(group=group)

    port = free_port()
    server_log = workdir / f"server-{n}.log"
    server = start_uvicorn(env, port, server_log)
    swarm = Swarm(workdir, f"fleet-{n}")
    try:
        time.sleep(0.5)
        rss0 = rss_kib(server.pid)
        log(f"[fleet N={n}] connecting (server pid {server.pid}, rss {rss0} KiB) ...")
        r = swarm.call(cmd="connect", url=f"ws://127.0.0.1:{port}/ws/agent/", secrets=secrets,
                       concurrency=args.connect_concurrency, timeout=120)
        connected = r["connected"]
        res["connected"], res["connect_s"] = connected, r["connect_s"]
        emit(f"{p}_connected", connected)
        emit(f"{p}_connect_s", r["connect_s"])
        time.sleep(0.5)
        rss1 = rss_kib(server.pid)
        res["kib_per_conn"] = (rss1 - rss0) / max(connected, 1)
        emit(f"{p}_server_rss_kib", rss1)
        if connected == 0:
            log(f"[fleet N={n}] nothing connected: {r.get('first_error')}\n{tail(server_log)}")
            res["errors"] = n
            emit(f"{p}_errors", n)
            return res

        log(f"[fleet N={n}] hello ...")
        cpu = phase_cpu(server.pid, swarm)
        r = swarm.call(cmd="hello", timeout=limit)
        cpu(p, "hello")
        res["hello_per_s"] = r["answered"] / r["hello_s"] if r["hello_s"] else None
        emit(f"{p}_hello_answered", r["answered"])
        emit(f"{p}_hello_per_s", res["hello_per_s"])
        rev = group.policy_revision
        # Every agent acknowledges the policy it got with hello: wait until all acks are stored.
        _, t_ack = wait_until(lambda: hosts.filter(policy_revision=rev).count() >= connected, limit, 0.1)
        if t_ack:
            res["initial_ack_per_s"] = connected / (t_ack - r["t0"])
            emit(f"{p}_hello_to_all_acked_s", t_ack - r["t0"])
        else:
            log(f"[fleet N={n}] initial acks incomplete: {hosts.filter(policy_revision=rev).count()}/{connected}")

        log(f"[fleet N={n}] {k} status frames per agent ...")
        cpu = phase_cpu(server.pid, swarm)
        t0 = time.monotonic()
        swarm.send(cmd="status", k=k)
        last, t_done = wait_until(lambda: hosts.filter(status_seq=k).count() >= connected, limit, 0.05)
        r = swarm.recv()
        cpu(p, "status")
        if t_done:
            res["status_per_s"] = connected * k / (t_done - t0)
            emit(f"{p}_status_per_s", res["status_per_s"])
        else:
            emit(f"{p}_status_per_s", "timeout")
            log(f"[fleet N={n}] status persisted for {hosts.filter(status_seq=k).count()}/{connected} hosts")
        emit(f"{p}_status_send_s", r["send_s"])

        st = swarm.call(cmd="stats")
        if st["open"] < connected:  # uvicorn's keepalive ping timed out on busy sockets (see README)
            log(f"[fleet N={n}] {connected - st['open']} connections were closed by the server: {st['errors']}; "
                f"first: {st.get('first_error')}")
        emit(f"{p}_open_before_switch", st["open"])
        connected = st["open"]
        if connected == 0:
            emit(f"{p}_errors", count_errors(st) + n)
            return res
        log(f"[fleet N={n}] channel switch ...")
        target = Channel.objects.get(organization__slug=boot["org"],
                                     name="beta" if group.channel.name != "beta" else "stable")
        cpu = phase_cpu(server.pid, swarm)
        t0 = time.monotonic()
        group.apply_changes({"channel": target}, actor="bench")
        rev = group.policy_revision
        swarm.send(cmd="wait_policy", revision=rev, timeout=limit)
        _, t_db = wait_until(lambda: hosts.filter(policy_revision=rev, online=True).count() >= connected,
                             limit, 0.05)
        r = swarm.recv()
        cpu(p, "switch")
        if r["last_t"] and r["got"] >= connected:
            res["switch_to_last_frame_s"] = r["last_t"] - t0
            emit(f"{p}_switch_to_last_frame_s", res["switch_to_last_frame_s"])
        else:
            emit(f"{p}_switch_to_last_frame_s", f"timeout({r['got']}/{connected})")
        if t_db:
            res["switch_to_last_ack_s"] = t_db - t0
            emit(f"{p}_switch_to_last_ack_s", res["switch_to_last_ack_s"])
        else:
            emit(f"{p}_switch_to_last_ack_s", "timeout")
        res["errors"] = count_errors(r) + (n - connected)
        emit(f"{p}_errors", res["errors"])
        if r.get("first_error"):
            log(f"[fleet N={n}] first agent-side error: {r['first_error']}")
        res["kib_per_conn"] = res["kib_per_conn"]
        emit(f"{p}_server_kib_per_conn", round(res["kib_per_conn"], 1))
        text = server_log.read_text(errors="replace")
        emit(f"{p}_server_log_errors", text.count("Traceback") + text.count(" ERROR"))
        if "Traceback" in text:
            log(f"[fleet N={n}] server log tail:\n{tail(server_log, 40)}")
    finally:
        swarm.close()
        stop(server)
    return res


# -- baseline ---------------------------------------------------------------------------------
def run_baseline(n: int, k: int, workdir: Path, args) -> dict:
    from websockets.sync.client import connect as sync_connect

    p = f"baseline_{n}"
    res: dict = {}
    port = free_port()
    server = start([BIN / "python", HERE / "_baseline_server.py", str(port)], stdout=subprocess.PIPE,
                   log_path=workdir / f"baseline-{n}.log")
    if server.stdout.readline().strip() != b"READY":
        raise RuntimeError("the baseline server did not start")
    swarm = Swarm(workdir, f"baseline-{n}")
    control = None
    try:
        time.sleep(0.5)
        rss0 = rss_kib(server.pid)
        secrets = [f"fwh_{i:012x}_baseline" for i in range(n)]
        r = swarm.call(cmd="connect", url=f"ws://127.0.0.1:{port}/ws/agent/", secrets=secrets,
                       concurrency=args.connect_concurrency, timeout=120)
        connected = r["connected"]
        emit(f"{p}_connected", connected)
        emit(f"{p}_connect_s", r["connect_s"])
        time.sleep(0.5)
        res["kib_per_conn"] = (rss_kib(server.pid) - rss0) / max(connected, 1)
        control = sync_connect(f"ws://127.0.0.1:{port}/control", compression=None).__enter__()

        def count() -> dict:
            control.send("count")
            return json.loads(control.recv())

        cpu = phase_cpu(server.pid, swarm)
        r = swarm.call(cmd="hello", timeout=240)
        cpu(p, "hello")
        res["hello_per_s"] = r["answered"] / r["hello_s"] if r["hello_s"] else None
        emit(f"{p}_hello_per_s", res["hello_per_s"])
        wait_until(lambda: count()["events"] >= connected, 60, 0.05)

        cpu = phase_cpu(server.pid, swarm)
        base = count()["status"]
        t0 = time.monotonic()
        swarm.send(cmd="status", k=k)
        _, t_done = wait_until(lambda: count()["status"] - base >= connected * k, 240, 0.02)
        swarm.recv()
        cpu(p, "status")
        res["status_per_s"] = connected * k / (t_done - t0) if t_done else None
        emit(f"{p}_status_per_s", res["status_per_s"] if t_done else "timeout")

        t0 = time.monotonic()
        control.send("broadcast")
        rev = json.loads(control.recv())["revision"]
        r = swarm.call(cmd="wait_policy", revision=rev, timeout=120)
        if r["last_t"] and r["got"] >= connected:
            res["broadcast_to_last_s"] = r["last_t"] - t0
        emit(f"{p}_broadcast_to_last_s", res.get("broadcast_to_last_s", "timeout"))
        emit(f"{p}_server_kib_per_conn", round(res["kib_per_conn"], 1))
        emit(f"{p}_errors", count_errors(r) + (n - connected))
    finally:
        if control is not None:
            control.close()
        swarm.close()
        stop(server)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000",
                    help="comma list of agent counts (10000 works but takes about 11 min on 2 cores)")
    ap.add_argument("--status-frames", type=int, default=5, help="status frames per agent (K)")
    ap.add_argument("--database-url", default=None,
                    help="default: a fresh SQLite file; postgres://... uses a dedicated database "
                         "'fleetweb_bench' (dropped and created, dropped at the end)")
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    ap.add_argument("--connect-concurrency", type=int, default=256, help="handshakes in flight")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--baseline-only", action="store_true")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    k = args.status_frames

    install_cleanup()
    emit("fanin_nofile_limit", raise_nofile())
    workdir = new_workdir("fanin")
    db = Database(args.database_url, workdir)
    db.create()
    env = bench_env(db.url, args.redis_url, workdir)
    setup_django(env)
    emit("fanin_database", db.kind)
    emit("fanin_status_frames", k)
    t_start = time.monotonic()
    emit("fanin_loadavg_start", loadavg())
    for n in sizes:
        try:
            fleet = {} if args.baseline_only else run_fleet(n, k, env, workdir, args)
        except Exception as exc:
            log(f"[fleet N={n}] failed: {exc!r}")
            emit(f"fanin_{n}_failed", type(exc).__name__)
            fleet = {}
        if args.skip_baseline:
            continue
        try:
            base = run_baseline(n, k, workdir, args)
        except Exception as exc:
            log(f"[baseline N={n}] failed: {exc!r}")
            base = {}
        emit_ratio(f"ratio_{n}_hello_per_s", fleet.get("hello_per_s"), base.get("hello_per_s"))
        emit_ratio(f"ratio_{n}_status_per_s", fleet.get("status_per_s"), base.get("status_per_s"))
        emit_ratio(f"ratio_{n}_server_kib_per_conn", fleet.get("kib_per_conn"), base.get("kib_per_conn"))
        emit_ratio(f"ratio_{n}_switch_frame_vs_broadcast", fleet.get("switch_to_last_frame_s"),
                   base.get("broadcast_to_last_s"))
        emit_ratio(f"ratio_{n}_switch_ack_vs_broadcast", fleet.get("switch_to_last_ack_s"),
                   base.get("broadcast_to_last_s"))
    emit("fanin_loadavg_end", loadavg())
    emit("fanin_wall_s", round(time.monotonic() - t_start, 1))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: stopping everything this bench started")
        sys.exit(130)
