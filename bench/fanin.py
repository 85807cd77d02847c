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
    UVICORN_ARGS,
    Database,
    bench_env,
    bootstrap,
    cpu_seconds,
    emit,
    emit_ratio,
    free_port,
    install_cleanup,
    kill_hard,
    loadavg,
    log,
    new_workdir,
    pct,
    raise_nofile,
    rss_kib,
    seed_hosts,
    setup_django,
    socket_count,
    start,
    start_uvicorn,
    stop,
    tail,
    worker_pids,
)

HERE = Path(__file__).resolve().parent


AGENTS_PER_PROCESS = 10_000  # one agents process holds at most this many sockets (open-files limit 20,000)


class Swarm:
    """The agents processes (bench/_agents.py), driven over pipes: one per AGENTS_PER_PROCESS agents
    (``procs``); a command's ``secrets`` are split between them and their replies merged (counts
    summed, times: the earliest start, the latest end)."""

    SUM = ("connected", "failed", "answered", "sent", "seq_sum", "got", "target", "open", "total", "closed",
           "armed", "reconnected", "dropped", "attempts", "failed_attempts")
    LATEST = ("connect_s", "sent_s", "send_s", "last_t")
    EARLIEST = ("t0", "first_t")

    def __init__(self, workdir: Path, tag: str, procs: int = 1):
        self.procs = [start([BIN / "python", HERE / "_agents.py"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            log_path=workdir / f"agents-{tag}-{i}.log") for i in range(procs)]

    def send(self, **cmd) -> None:
        secrets = cmd.get("secrets")
        for i, proc in enumerate(self.procs):
            part = cmd if secrets is None else {**cmd, "secrets": secrets[i::len(self.procs)]}
            proc.stdin.write((json.dumps(part) + "\n").encode())
            proc.stdin.flush()

    def _recv_one(self, proc) -> dict:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"an agents process exited ({proc.poll()})")
        return json.loads(line)

    def recv(self) -> dict:
        replies = [self._recv_one(proc) for proc in self.procs]
        if len(replies) == 1:
            return replies[0]
        out: dict = {}
        for key in {k for r in replies for k in r}:
            values = [r[key] for r in replies if r.get(key) is not None]
            if key in self.SUM:
                out[key] = sum(values)
            elif key in self.LATEST:
                out[key] = max(values) if values else None
            elif key in self.EARLIEST:
                out[key] = min(values) if values else None
            elif key == "errors":
                out[key] = {}
                for errors in values:
                    for kind, count in errors.items():
                        out[key][kind] = out[key].get(kind, 0) + count
            elif key == "first_error":
                out[key] = values[0] if values else None
            elif values and isinstance(values[0], list):
                out[key] = [x for v in values for x in v]
            else:
                out[key] = values[0] if values else None
        if "hello_s" in out:
            out["hello_s"] = out["last_t"] - out["t0"] if out.get("last_t") else None
        return out

    def call(self, **cmd) -> dict:
        self.send(**cmd)
        return self.recv()

    def close(self) -> dict | None:
        """Ask the agents to close their sockets (10 s at most: a command may still be pending), then stop."""
        import select

        closed = 0
        try:
            self.send(cmd="close")
            for proc in self.procs:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if select.select([proc.stdout], [], [], 0.5)[0]:
                        reply = self._recv_one(proc)
                        if "closed" in reply:
                            closed += reply["closed"]
                            break
            return {"closed": closed}
        except Exception:
            return None
        finally:
            for proc in self.procs:
                stop(proc)

    def cpu(self) -> float:
        return sum(cpu_seconds(proc.pid) for proc in self.procs)


def agent_procs(n: int, args) -> int:
    return max(1, -(-n // args.agents_per_process))


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


_LAST_CPU: dict[int, float] = {}


def cpu_of(pids) -> float:
    """CPU seconds of these processes; one that is gone counts with what it had used when last seen."""
    total = 0.0
    for pid in pids:
        try:
            _LAST_CPU[pid] = cpu_seconds(pid)
        except OSError:
            pass
        total += _LAST_CPU.get(pid, 0.0)
    return total


def phase_cpu(pids, swarm: Swarm):
    """CPU of the server processes (summed) and of the agents during a phase, % of one core."""
    pids = list(pids)
    server_cpu = lambda: cpu_of(pids)  # noqa: E731
    t, s, c = time.monotonic(), server_cpu(), swarm.cpu()

    def done(prefix: str, tag: str) -> None:
        wall = time.monotonic() - t
        emit(f"{prefix}_{tag}_cpu_server_pct", round(100 * (server_cpu() - s) / wall, 1))
        emit(f"{prefix}_{tag}_cpu_client_pct", round(100 * (swarm.cpu() - c) / wall, 1))

    return done


def count_errors(reply: dict) -> int:
    return sum(reply.get("errors", {}).values())


def log_errors(p: str, server_log: Path) -> None:
    text = server_log.read_text(errors="replace")
    emit(f"{p}_server_log_errors", text.count("Traceback") + text.count(" ERROR"))
    # Frames reconciliation sent again: a heartbeat read after a switch committed, before the
    # switch's broadcast reached its socket, finds the agent behind (harmless, and read in batches).
    emit(f"{p}_server_resends", text.count("resending its"))
    if "Traceback" in text:
        log(f"[{p}] server log tail:\n{tail(server_log, 40)}")


def memory(pids) -> dict:
    out = {}
    for pid in pids:
        try:
            out[pid] = (rss_kib(pid), socket_count(pid))
        except OSError:  # a worker uvicorn's supervisor replaced
            pass
    return out


def emit_memory(p: str, before: dict, connected: int, suffix: str = "") -> float:
    """Server RSS growth per connection: per worker (its own sockets) when there are several."""
    after = memory(before)
    grown = sum(after[pid][0] - before[pid][0] for pid in after)
    connected = min(connected, sum(after[pid][1] - before[pid][1] for pid in after)) if len(before) > 1 else connected
    emit(f"{p}_server_rss_kib{suffix}", sum(rss for rss, _ in after.values()))
    if len(before) > 1:
        for i, pid in enumerate(sorted(before)):
            if pid not in after:
                emit(f"{p}_worker{i}_connections{suffix}", "gone")
                continue
            conns = after[pid][1] - before[pid][1]
            emit(f"{p}_worker{i}_connections{suffix}", conns)
            emit(f"{p}_worker{i}_kib_per_conn{suffix}",
                 round((after[pid][0] - before[pid][0]) / conns, 1) if conns > 0 else "n/a")
    return grown / max(connected, 1)


# -- fleetweb ---------------------------------------------------------------------------------
def run_fleet(n: int, k: int, env: dict, workdir: Path, args, workers: int = 1) -> dict:
    from fleetweb.fleet.models import Group, Host
    from fleetweb.updates.models import Channel

    p = f"fanin_{n}" if workers == 1 else f"fanin_w{workers}_{n}"
    res: dict = {}
    limit = max(240.0, n / 20)  # seconds per phase: 10,000 agents need minutes on this machine
    boot = bootstrap(f"fanin-{n}-{workers}-{int(time.time())}", "bench")
    log(f"[{p}] seeding {n} hosts ...")
    secrets = seed_hosts(boot["org"], boot["group"], n)
    group = Group.objects.select_related("channel").get(organization__slug=boot["org"], slug=boot["group"])
    hosts = Host.objects.filter(group=group)

    port = free_port()
    server_log = workdir / f"server-{p}.log"
    server = start_uvicorn(env, port, server_log, workers=workers)
    pids = worker_pids(server)
    swarm = Swarm(workdir, p, agent_procs(n, args))

    watched = set(pids)

    def replaced() -> bool:
        """uvicorn's supervisor kills a worker that misses its health ping (5 s) and starts another:
        its agents are gone, so a phase waiting for all of them stops at once (the next phases go
        on with the agents still connected)."""
        nonlocal watched
        now = set(worker_pids(server)) if workers > 1 else watched
        if now != watched:
            res["workers_replaced"] = res.get("workers_replaced", 0) + len(watched - now)
            log(f"[{p}] worker(s) {sorted(watched - now)} replaced by {sorted(now - watched)}")
            watched = now
            return True
        return False

    def all_of(count) -> object:
        return lambda: "replaced" if replaced() else count() >= connected

    try:
        time.sleep(0.5)
        mem0 = memory(pids)
        log(f"[{p}] connecting {n} agents from {len(swarm.procs)} process(es) (server pids {pids}, "
            f"rss {sum(r for r, _ in mem0.values())} KiB) ...")
        r = swarm.call(cmd="connect", url=f"ws://127.0.0.1:{port}/ws/agent/", secrets=secrets,
                       concurrency=args.connect_concurrency, timeout=120, compression=args.agent_compression)
        connected = r["connected"]
        res["connected"], res["connect_s"] = connected, r["connect_s"]
        emit(f"{p}_connected", connected)
        emit(f"{p}_connect_s", r["connect_s"])
        time.sleep(0.5)
        res["kib_per_conn"] = emit_memory(p, mem0, connected)
        if connected == 0:
            log(f"[{p}] nothing connected: {r.get('first_error')}\n{tail(server_log)}")
            res["errors"] = n
            emit(f"{p}_errors", n)
            return res

        log(f"[{p}] hello ...")
        cpu = phase_cpu(pids, swarm)
        r = swarm.call(cmd="hello", timeout=limit)
        cpu(p, "hello")
        res["hello_per_s"] = r["answered"] / r["hello_s"] if r["hello_s"] else None
        emit(f"{p}_hello_answered", r["answered"])
        emit(f"{p}_hello_per_s", res["hello_per_s"])
        rev = group.policy_revision
        # Every agent acknowledges the policy it got with hello: wait until all acks are stored.
        last, t_ack = wait_until(all_of(lambda: hosts.filter(policy_revision=rev).count()), limit, 0.1)
        if t_ack and last != "replaced":
            res["initial_ack_per_s"] = connected / (t_ack - r["t0"])
            emit(f"{p}_hello_to_all_acked_s", t_ack - r["t0"])
        else:
            log(f"[{p}] initial acks incomplete: {hosts.filter(policy_revision=rev).count()}/{connected}")

        if replaced() or res.get("workers_replaced"):  # go on with the agents still connected
            connected = swarm.call(cmd="stats")["open"]
            log(f"[{p}] {connected} agents still connected")
        log(f"[{p}] {k} status frames per agent ...")
        cpu = phase_cpu(pids, swarm)
        t0 = time.monotonic()
        swarm.send(cmd="status", k=k)
        last, t_done = wait_until(all_of(lambda: hosts.filter(status_seq=k).count()), limit, 0.05)
        r = swarm.recv()
        cpu(p, "status")
        if t_done and last != "replaced":
            res["status_per_s"] = connected * k / (t_done - t0)
            emit(f"{p}_status_per_s", res["status_per_s"])
            if workers > 1:
                emit(f"{p}_status_per_s_per_process", res["status_per_s"] / workers)
        else:
            emit(f"{p}_status_per_s", "timeout")
            log(f"[{p}] status persisted for {hosts.filter(status_seq=k).count()}/{connected} hosts")
        emit(f"{p}_status_send_s", r["send_s"])

        st = swarm.call(cmd="stats")
        if st["open"] < connected:  # uvicorn's keepalive ping timed out on busy sockets (see README)
            log(f"[{p}] {connected - st['open']} connections were closed by the server: {st['errors']}; "
                f"first: {st.get('first_error')}")
        emit(f"{p}_open_before_switch", st["open"])
        connected = st["open"]
        if connected == 0:
            emit(f"{p}_errors", count_errors(st) + n)
            return res
        log(f"[{p}] channel switch ...")
        target = Channel.objects.get(organization__slug=boot["org"],
                                     name="beta" if group.channel.name != "beta" else "stable")
        cpu = phase_cpu(pids, swarm)
        t0 = time.monotonic()
        group.apply_changes({"channel": target}, actor="bench")
        rev = group.policy_revision
        swarm.send(cmd="wait_policy", revision=rev, timeout=limit)
        last, t_db = wait_until(all_of(lambda: hosts.filter(policy_revision=rev, online=True).count()), limit, 0.05)
        t_db = None if last == "replaced" else t_db
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
            log(f"[{p}] first agent-side error: {r['first_error']}")
        emit(f"{p}_server_kib_per_conn", round(res["kib_per_conn"], 1))
        # after hello, status and a switch: what a connected, answered agent costs in steady state
        res["kib_per_conn_end"] = emit_memory(p, mem0, connected, "_end")
        emit(f"{p}_server_kib_per_conn_end", round(res["kib_per_conn_end"], 1))
        log_errors(p, server_log)
    finally:
        if workers > 1:
            replaced()
            emit(f"{p}_workers_replaced", res.get("workers_replaced", 0))
            if res.get("workers_replaced"):
                log(f"[{p}] uvicorn replaced {res['workers_replaced']} worker(s) that missed its health ping "
                    f"(--timeout-worker-healthcheck, 5 s): their agents were disconnected")
        swarm.close()
        stop(server)
    return res


def run_storm(n: int, env: dict, workdir: Path, args) -> dict:
    """N agents connected and answered; the web process is killed (SIGKILL) and started again on the
    same port; every agent reconnects with the real agent's backoff.  Measures kill -> every agent
    connected again and its hello answered."""
    from fleetweb.fleet.models import Group, Host

    p = f"storm_{n}"
    res: dict = {}
    limit = max(300.0, n / 20)
    boot = bootstrap(f"storm-{n}-{int(time.time())}", "bench")
    log(f"[{p}] seeding {n} hosts ...")
    secrets = seed_hosts(boot["org"], boot["group"], n)
    group = Group.objects.get(organization__slug=boot["org"], slug=boot["group"])
    hosts = Host.objects.filter(group=group)
    port = free_port()
    server_log = workdir / f"server-{p}.log"
    server = start_uvicorn(env, port, server_log)
    swarm = Swarm(workdir, p, agent_procs(n, args))
    try:
        r = swarm.call(cmd="connect", url=f"ws://127.0.0.1:{port}/ws/agent/", secrets=secrets,
                       concurrency=args.connect_concurrency, timeout=120)
        log(f"[{p}] {r['connected']} connected; hello ...")
        r = swarm.call(cmd="hello", timeout=limit)
        rev = group.policy_revision
        wait_until(lambda: hosts.filter(policy_revision=rev).count() >= r["answered"], limit, 0.2)
        armed = swarm.call(cmd="storm_arm")["armed"]
        emit(f"{p}_agents", armed)
        log(f"[{p}] {armed} agents answered; kill -9 {server.pid} and start again on port {port} ...")
        t_kill = time.monotonic()
        kill_hard(server)
        server = start_uvicorn(env, port, server_log)
        t_ready = time.monotonic()
        cpu = phase_cpu([server.pid], swarm)
        r = swarm.call(cmd="storm_wait", timeout=limit)
        cpu(p, "reconnect")
        res.update(storm_summary(p, r, t_kill, t_ready, armed))
        online = hosts.filter(online=True, connection_id__isnull=False).count()
        emit(f"{p}_online_in_db", online)
        emit(f"{p}_errors", count_errors(r))
        if r.get("first_error"):
            log(f"[{p}] first agent-side error: {r['first_error']}")
        log_errors(p, server_log)
    finally:
        swarm.close()
        stop(server)
    return res


def storm_summary(p: str, r: dict, t_kill: float, t_ready: float, armed: int) -> dict:
    res = {}
    emit(f"{p}_restart_s", t_ready - t_kill)
    emit(f"{p}_reconnected", r["reconnected"])
    emit(f"{p}_connect_attempts", r["attempts"])
    emit(f"{p}_failed_attempts", r["failed_attempts"])
    if r.get("hello_ms"):
        emit(f"{p}_reconnect_hello_p50_ms", pct(r["hello_ms"], 50))
        emit(f"{p}_reconnect_hello_p99_ms", pct(r["hello_ms"], 99))
    if r["first_t"] and r["last_t"]:
        emit(f"{p}_first_to_last_answered_s", r["last_t"] - r["first_t"])
    if r["reconnected"] >= armed and r["last_t"]:
        res["kill_to_all_s"] = r["last_t"] - t_kill
        res["ready_to_all_s"] = r["last_t"] - t_ready
        emit(f"{p}_kill_to_all_answered_s", res["kill_to_all_s"])
        emit(f"{p}_ready_to_all_answered_s", res["ready_to_all_s"])
    else:
        emit(f"{p}_kill_to_all_answered_s", f"timeout({r['reconnected']}/{armed})")
    return res


# -- baseline ---------------------------------------------------------------------------------
class Baseline:
    """The bare `websockets` server: one process, or ``workers`` processes sharing the port
    (SO_REUSEPORT), each with its own control port."""

    def __init__(self, workdir: Path, tag: str, workers: int = 1, port: int | None = None):
        self.workdir, self.tag, self.workers = workdir, tag, workers
        self.port = port or free_port()
        self.controls: list = []
        self.servers: list[subprocess.Popen] = []
        self.start()

    def start(self) -> None:
        from websockets.sync.client import connect as sync_connect

        for i in range(self.workers):
            extra = [] if self.workers == 1 else ["--reuse-port", "--control-port", str(free_port())]
            server = start([BIN / "python", HERE / "_baseline_server.py", str(self.port), *extra],
                           stdout=subprocess.PIPE, log_path=self.workdir / f"baseline-{self.tag}-{i}.log")
            if server.stdout.readline().strip() != b"READY":
                raise RuntimeError("the baseline server did not start")
            self.servers.append(server)
            control_port = self.port if self.workers == 1 else int(extra[-1])
            self.controls.append(sync_connect(f"ws://127.0.0.1:{control_port}/control", compression=None).__enter__())

    @property
    def pids(self) -> list[int]:
        return [s.pid for s in self.servers]

    def count(self) -> dict:
        out: dict = {}
        for control in self.controls:
            control.send("count")
            for key, value in json.loads(control.recv()).items():
                out[key] = out.get(key, 0) + value
        return out

    def broadcast(self) -> int:
        revs = []
        for control in self.controls:
            control.send("broadcast")
            revs.append(json.loads(control.recv())["revision"])
        return max(revs)

    def close_controls(self) -> None:
        for control in self.controls:
            try:
                control.close()
            except Exception:
                pass
        self.controls = []

    def kill(self) -> None:
        self.close_controls()
        for server in self.servers:
            kill_hard(server)
        self.servers = []

    def stop(self) -> None:
        self.close_controls()
        for server in self.servers:
            stop(server)
        self.servers = []


def run_baseline(n: int, k: int, workdir: Path, args, workers: int = 1) -> dict:
    p = f"baseline_{n}" if workers == 1 else f"baseline_w{workers}_{n}"
    res: dict = {}
    base = Baseline(workdir, p, workers)
    swarm = Swarm(workdir, p, agent_procs(n, args))
    try:
        time.sleep(0.5)
        mem0 = memory(base.pids)
        secrets = [f"fwh_{i:012x}_baseline" for i in range(n)]
        r = swarm.call(cmd="connect", url=f"ws://127.0.0.1:{base.port}/ws/agent/", secrets=secrets,
                       concurrency=args.connect_concurrency, timeout=120)
        connected = r["connected"]
        emit(f"{p}_connected", connected)
        emit(f"{p}_connect_s", r["connect_s"])
        time.sleep(0.5)
        res["kib_per_conn"] = emit_memory(p, mem0, connected)

        cpu = phase_cpu(base.pids, swarm)
        r = swarm.call(cmd="hello", timeout=240)
        cpu(p, "hello")
        res["hello_per_s"] = r["answered"] / r["hello_s"] if r["hello_s"] else None
        emit(f"{p}_hello_per_s", res["hello_per_s"])
        wait_until(lambda: base.count()["events"] >= connected, 60, 0.05)

        cpu = phase_cpu(base.pids, swarm)
        status0 = base.count()["status"]
        t0 = time.monotonic()
        swarm.send(cmd="status", k=k)
        _, t_done = wait_until(lambda: base.count()["status"] - status0 >= connected * k, 240, 0.02)
        swarm.recv()
        cpu(p, "status")
        res["status_per_s"] = connected * k / (t_done - t0) if t_done else None
        emit(f"{p}_status_per_s", res["status_per_s"] if t_done else "timeout")
        if workers > 1 and t_done:
            emit(f"{p}_status_per_s_per_process", res["status_per_s"] / workers)

        t0 = time.monotonic()
        rev = base.broadcast()
        r = swarm.call(cmd="wait_policy", revision=rev, timeout=120)
        if r["last_t"] and r["got"] >= connected:
            res["broadcast_to_last_s"] = r["last_t"] - t0
        emit(f"{p}_broadcast_to_last_s", res.get("broadcast_to_last_s", "timeout"))
        emit(f"{p}_server_kib_per_conn", round(res["kib_per_conn"], 1))
        emit(f"{p}_errors", count_errors(r) + (n - connected))
    finally:
        base.stop()
        swarm.close()
    return res


def run_baseline_storm(n: int, workdir: Path, args) -> dict:
    p = f"baseline_storm_{n}"
    base = Baseline(workdir, p)
    swarm = Swarm(workdir, p, agent_procs(n, args))
    res: dict = {}
    try:
        secrets = [f"fwh_{i:012x}_baseline" for i in range(n)]
        swarm.call(cmd="connect", url=f"ws://127.0.0.1:{base.port}/ws/agent/", secrets=secrets,
                   concurrency=args.connect_concurrency, timeout=120)
        swarm.call(cmd="hello", timeout=240)
        armed = swarm.call(cmd="storm_arm")["armed"]
        emit(f"{p}_agents", armed)
        t_kill = time.monotonic()
        base.kill()
        base.start()
        t_ready = time.monotonic()
        cpu = phase_cpu(base.pids, swarm)
        r = swarm.call(cmd="storm_wait", timeout=300)
        cpu(p, "reconnect")
        res.update(storm_summary(p, r, t_kill, t_ready, armed))
        emit(f"{p}_errors", count_errors(r))
    finally:
        base.stop()
        swarm.close()
    return res


def sizes_of(text: str) -> list[int]:
    return [int(s) for s in (text or "").split(",") if s.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100,1000",
                    help="comma list of agent counts, one web process (10000 takes about 10 min on 2 cores)")
    ap.add_argument("--storm-sizes", default="",
                    help="comma list: N agents answered, the web process killed (SIGKILL) and restarted; "
                         "time until all reconnected and answered (e.g. 10000)")
    ap.add_argument("--workers-sizes", default="",
                    help="comma list: the fan-in with --workers web processes on one port (e.g. 10000,20000)")
    ap.add_argument("--workers", type=int, default=2, help="web processes for --workers-sizes (uvicorn --workers)")
    ap.add_argument("--status-frames", type=int, default=5, help="status frames per agent (K)")
    ap.add_argument("--database-url", default=None,
                    help="default: a fresh SQLite file; postgres://.../NAME uses the database NAME "
                         "(fleetweb_bench if none; dropped and created, dropped at the end)")
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    ap.add_argument("--connect-concurrency", type=int, default=256, help="handshakes in flight")
    ap.add_argument("--agents-per-process", type=int, default=AGENTS_PER_PROCESS,
                    help="simulated agents per agents process (the open-files limit is per process)")
    ap.add_argument("--agent-compression", choices=["deflate"], default=None,
                    help="the agents offer per-message deflate (the websockets client's default; the agent "
                         "offers none): the server declines it unless --server-accepts-deflate")
    ap.add_argument("--server-accepts-deflate", action="store_true",
                    help="start uvicorn with --ws-per-message-deflate true (its default; make run declines it)")
    ap.add_argument("--skip-baseline", action="store_true")
    ap.add_argument("--baseline-only", action="store_true")
    args = ap.parse_args()
    k = args.status_frames

    install_cleanup()
    if args.server_accepts_deflate:  # the last value of a repeated uvicorn option wins
        UVICORN_ARGS.extend(["--ws-per-message-deflate", "true"])
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
    runs = [(n, 1) for n in sizes_of(args.sizes)] + [(n, args.workers) for n in sizes_of(args.workers_sizes)]
    for n, workers in runs:
        tag = f"{n}" if workers == 1 else f"w{workers}_{n}"
        try:
            fleet = {} if args.baseline_only else run_fleet(n, k, env, workdir, args, workers)
        except Exception as exc:
            log(f"[fleet {tag}] failed: {exc!r}")
            emit(f"fanin_{tag}_failed", type(exc).__name__)
            fleet = {}
        if args.skip_baseline:
            continue
        try:
            base = run_baseline(n, k, workdir, args, workers)
        except Exception as exc:
            log(f"[baseline {tag}] failed: {exc!r}")
            base = {}
        emit_ratio(f"ratio_{tag}_hello_per_s", fleet.get("hello_per_s"), base.get("hello_per_s"))
        emit_ratio(f"ratio_{tag}_status_per_s", fleet.get("status_per_s"), base.get("status_per_s"))
        emit_ratio(f"ratio_{tag}_server_kib_per_conn", fleet.get("kib_per_conn"), base.get("kib_per_conn"))
        emit_ratio(f"ratio_{tag}_switch_frame_vs_broadcast", fleet.get("switch_to_last_frame_s"),
                   base.get("broadcast_to_last_s"))
        emit_ratio(f"ratio_{tag}_switch_ack_vs_broadcast", fleet.get("switch_to_last_ack_s"),
                   base.get("broadcast_to_last_s"))
    for n in sizes_of(args.storm_sizes):
        try:
            fleet = {} if args.baseline_only else run_storm(n, env, workdir, args)
        except Exception as exc:
            log(f"[storm {n}] failed: {exc!r}")
            emit(f"storm_{n}_failed", type(exc).__name__)
            fleet = {}
        if args.skip_baseline:
            continue
        try:
            base = run_baseline_storm(n, workdir, args)
        except Exception as exc:
            log(f"[baseline storm {n}] failed: {exc!r}")
            base = {}
        emit_ratio(f"ratio_storm_{n}_kill_to_all", fleet.get("kill_to_all_s"), base.get("kill_to_all_s"))
        emit_ratio(f"ratio_storm_{n}_ready_to_all", fleet.get("ready_to_all_s"), base.get("ready_to_all_s"))
    emit("fanin_loadavg_end", loadavg())
    emit("fanin_wall_s", round(time.monotonic() - t_start, 1))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: stopping everything this bench started")
        sys.exit(130)
