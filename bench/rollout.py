#!/usr/bin/env python
"""Rollout: N simulated hosts updated under a policy, and payload download throughput.

    .venv/bin/python bench/rollout.py [--hosts 200] [--max-in-flight 20] [--payload-mib 8]
                                      [--install-s 1] [--reboot-s 1] [--worker-pool solo|prefork]
                                      [--database-url postgres://postgres@127.0.0.1:5432/x]

One uvicorn process, one Celery worker (solo pool by default; ``--worker-pool prefork`` runs 2
processes), Redis (127.0.0.1:6379, a unique key prefix and queue), a fresh SQLite file (or a
dedicated PostgreSQL database).  N hosts are bulk-created with credentials; N simulated agents run
in one asyncio loop (a thread of this process) over real websockets.  Each agent: hello → policy
(acknowledged) → on an ``update`` frame: checks the release signature against the policy's key,
sends ``status DOWNLOADING``, downloads the payload over HTTP from the frame's per-host URL and
checks size + sha256, "installs" (sleeps --install-s), sends ``event update_installed`` and
``event rebooting``, closes, "reboots" (sleeps --reboot-s), reconnects with a new boot id and the
new version active on USR-B, and sends ``event booted_new_version``.  The release is published
with the ORM from this process (Celery is not eager here: the rollout waves run in the worker,
their ``update`` frames reach uvicorn through the Redis hub).

Phase 1 (rollout): total time from publish to the rollout's ``finished`` timestamp, against the
policy's ideal ceil(N/M) × per-host time, where per-host time is the median of
(finished_at − granted_at) over the rollout's hosts.  ``rollout_max_in_flight_observed`` is the
maximum overlap of the [granted_at, finished_at] intervals (must be ≤ M).

Phase 2 (download): 50 concurrent downloads of the payload from 50 per-host signed URLs (each
written to its own file, like the agent's ``.part`` file; size checked, sha256 checked outside the
timed window), against 50 concurrent ``shutil.copyfile`` of the same file (50 threads: the same
concurrency, bytes read and bytes written).  A sequential 50× copy is printed for reference.  The
server's RSS is sampled every 10 ms during the downloads.

Prints name=value lines on stdout, progress on stderr.  Everything binds to 127.0.0.1 and every
process started here is stopped by its PID.  Nothing here asserts on timings.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import shutil
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BIN,
    DEFAULT_REDIS,
    Database,
    bench_env,
    bootstrap,
    cpu_seconds,
    emit,
    free_port,
    install_cleanup,
    log,
    new_workdir,
    on_exit,
    raise_nofile,
    rss_kib,
    seed_hosts,
    setup_django,
    start,
    start_uvicorn,
    stop,
    tail,
)

OLD_VERSION = "100.0.0"
NEW_VERSION = "101.0.0"
READ = 256 * 1024


def parts(active_b: bool, new_version: str | None) -> list[dict]:
    return [
        {"label": "USR-A", "number": 3, "version": OLD_VERSION, "priority": 0 if active_b else 1, "tries": 0,
         "successful": True, "active": not active_b},
        {"label": "USR-B", "number": 4, "version": new_version, "priority": 1 if active_b else 0, "tries": 0,
         "successful": active_b, "active": active_b},
    ]


def p50(values):
    return statistics.median(values) if values else None


# -- a minimal HTTP/1.1 GET (one connection per download, like the agent) ------------------------
async def http_get(url: str, sink=None, digest=None, timeout: float = 120.0, times: list | None = None
                   ) -> tuple[int, int]:
    """GET url; stream the body into ``sink`` (a file) and ``digest``; return (status, body bytes).
    ``times`` gets the perf_counter() of the response head."""
    u = urlsplit(url)

    async def go():
        reader, writer = await asyncio.open_connection(u.hostname, u.port or 80, limit=2 ** 20)
        try:
            writer.write(f"GET {u.path}{'?' + u.query if u.query else ''} HTTP/1.1\r\nHost: {u.netloc}\r\n"
                         f"User-Agent: fleetweb-bench-agent\r\nConnection: close\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if times is not None:
                times.append(time.perf_counter())
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            length = None
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            n = 0
            while length is None or n < length:
                data = await reader.read(READ if length is None else min(READ, length - n))
                if not data:
                    break
                n += len(data)
                if digest is not None:
                    digest.update(data)
                if sink is not None:
                    sink.write(data)
            return status, n
        finally:
            writer.close()

    return await asyncio.wait_for(go(), timeout)


# -- the simulated agents (one asyncio loop in a thread) -------------------------------------
class Agents:
    def __init__(self, ws_url: str, secrets: list[str], args):
        self.ws_url, self.secrets, self.args = ws_url, secrets, args
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="agents", daemon=True)
        self.thread.start()
        self.records: list[dict] = [{} for _ in secrets]
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None
        self.stop_event: asyncio.Event | None = None
        self.tasks: list = []

    def call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.first_error is None:
            self.first_error = f"{kind}: {detail}"[:300]
            log(f"agent error: {self.first_error}")

    async def _connect(self, i: int, boot_id: str, version: str, partitions: list):
        from websockets.asyncio.client import connect

        ws = await connect(self.ws_url, additional_headers={"Authorization": f"Bearer {self.secrets[i]}"},
                           compression=None, open_timeout=60, ping_interval=None, close_timeout=5,
                           max_size=2 ** 20)
        await ws.send(json.dumps({
            "type": "hello", "machine_id": self.records[i]["machine_id"], "boot_id": boot_id,
            "hostname": f"rollout-bench-{i:05d}", "agent_version": "bench-rollout", "version": version,
            "partitions": partitions, "update_status": "IDLE", "group": "stable",
            "reboot_strategy": "best-effort"}))
        while True:  # the policy comes first
            msg = json.loads(await asyncio.wait_for(ws.recv(), 60))
            if msg.get("type") == "policy":
                await self._ack(ws, msg)
                self.records[i]["policy"] = msg
                return ws
            if msg.get("type") == "error":
                raise RuntimeError(f"server error frame: {msg}")

    @staticmethod
    async def _ack(ws, policy: dict) -> None:
        await ws.send(json.dumps({"type": "event", "kind": "policy_applied", "data": {
            "revision": policy["revision"], "channel": policy["channel"],
            "reboot_strategy": policy["reboot_strategy"]}}))

    async def _next_update(self, ws) -> dict | None:
        """Read frames (acknowledging policies) until an update frame, or the end of the run."""
        stop = asyncio.ensure_future(self.stop_event.wait())
        try:
            while True:
                recv = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
                if recv not in done:
                    recv.cancel()
                    return None
                msg = json.loads(recv.result())
                if msg.get("type") == "policy":
                    await self._ack(ws, msg)
                elif msg.get("type") == "update":
                    return msg
        finally:
            stop.cancel()

    async def _agent(self, i: int, sem: asyncio.Semaphore, connected: asyncio.Future) -> None:
        from websockets.exceptions import ConnectionClosed

        from agent import signing

        rec = self.records[i]
        rec["machine_id"] = uuid.uuid4().hex
        ws = None
        try:
            async with sem:
                ws = await self._connect(i, uuid.uuid4().hex, OLD_VERSION, parts(False, None))
            connected.set_result(True)
            frame = await self._next_update(ws)
            if frame is None:
                return
            rec["t_frame"] = time.time()
            rollout = frame.get("rollout")
            policy = rec["policy"]
            if policy.get("signing_key"):
                signing.verify(policy["signing_key"], frame["signature"], frame["version"], frame["size"],
                               frame["sha256"])
            await ws.send(json.dumps({"type": "status", "update_status": "DOWNLOADING", "progress": 0.0,
                                      "rollout": rollout, "target_version": frame["version"], "seq": 1}))
            digest = hashlib.sha256()
            status, n = await http_get(frame["url"], digest=digest)
            rec["t_downloaded"] = time.time()
            if status != 200 or n != frame["size"] or digest.hexdigest() != frame["sha256"]:
                self.error("payload_mismatch", f"status {status}, {n} bytes")
                await ws.send(json.dumps({"type": "event", "kind": "update_error", "data": {
                    "rollout": rollout, "version": frame["version"], "reason": "payload mismatch"}}))
                return
            await asyncio.sleep(self.args.install_s)
            ref = {"version": frame["version"], "rollout": rollout}
            await ws.send(json.dumps({"type": "event", "kind": "update_installed", "data": ref}))
            await ws.send(json.dumps({"type": "event", "kind": "rebooting", "data": ref}))
            rec["t_installed"] = time.time()
            await ws.close(1000, "rebooting")
            await asyncio.sleep(self.args.reboot_s)
            ws = await self._connect(i, uuid.uuid4().hex, frame["version"], parts(True, frame["version"]))
            await ws.send(json.dumps({"type": "event", "kind": "booted_new_version", "data": {
                "version": frame["version"], "previous_version": OLD_VERSION, "rollout": rollout}}))
            rec["t_booted"] = time.time()
            await self._next_update(ws)  # stay online until the end of the run
        except asyncio.CancelledError:
            raise
        except (ConnectionClosed, OSError, RuntimeError, ValueError, asyncio.TimeoutError,
                signing.SignatureError) as exc:
            self.error(type(exc).__name__, str(exc))
        finally:
            if not connected.done():
                connected.set_result(False)
            if ws is not None:
                try:
                    await ws.close()
                except Exception:
                    pass

    async def _start(self) -> int:
        self.stop_event = asyncio.Event()
        sem = asyncio.Semaphore(50)
        futs = []
        for i in range(len(self.secrets)):
            f = self.loop.create_future()
            futs.append(f)
            self.tasks.append(self.loop.create_task(self._agent(i, sem, f)))
        return sum(bool(r) for r in await asyncio.gather(*futs))

    def start(self, timeout: float) -> int:
        return self.call(self._start(), timeout)

    async def _stop(self) -> None:
        self.stop_event.set()
        await asyncio.wait(self.tasks, timeout=15)
        for t in self.tasks:
            t.cancel()

    def stop(self) -> None:
        try:
            self.call(self._stop(), 30)
        except Exception as exc:
            log(f"agents did not stop cleanly: {exc!r}")
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


# -- the Celery worker ---------------------------------------------------------------------
def start_worker(env: dict, queue: str, workdir: Path, pool: str) -> object:
    log_path = workdir / "worker.log"
    cmd = [BIN / "celery", "-A", "fleetweb", "worker", "-l", "info", "-Q", queue,
           "-n", f"rollout-bench-{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle",
           "--without-heartbeat"]
    cmd += ["--pool", "solo"] if pool == "solo" else ["--pool", "prefork", "--concurrency", "2"]
    proc = start(cmd, env=env, log_path=log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the Celery worker exited with {proc.returncode}:\n{tail(log_path)}")
        if " ready." in log_path.read_text(errors="replace"):
            return proc
        time.sleep(0.2)
    raise SystemExit(f"the Celery worker did not get ready within 60 s:\n{tail(log_path)}")


def max_overlap(intervals, limit: int | None = None) -> tuple[int, float]:
    """Maximum number of overlapping intervals, and the total time (s) spent above ``limit``."""
    points = []
    for a, b in intervals:
        points.append((a, 1))
        points.append((b, -1))
    best = cur = 0
    over, since = 0.0, None
    for t, d in sorted(points):  # at equal times an end (-1) sorts before a start (+1)
        cur += d
        best = max(best, cur)
        if limit is not None:
            if cur > limit and since is None:
                since = t
            elif cur <= limit and since is not None:
                over += t - since
                since = None
    return best, over


# -- phase 1: the rollout -------------------------------------------------------------------
def run_rollout(args, boot, release, port: int, secrets: list[str], server) -> None:
    from fleetweb.fleet.models import Group, Host
    from fleetweb.updates.choices import RolloutStatus
    from fleetweb.updates.models import Rollout, RolloutHost

    n, m = args.hosts, args.max_in_flight
    group = Group.objects.select_related("channel").get(organization__slug=boot["org"], slug=boot["group"])
    Group.objects.filter(pk=group.pk).update(max_in_flight=m, update_timeout=600, safe_mode=False,
                                             max_updates_per_period=0, updates_enabled=True)
    agents = Agents(f"ws://127.0.0.1:{port}/ws/agent/", secrets, args)
    try:
        t = time.monotonic()
        connected = agents.start(timeout=120)
        log(f"{connected}/{n} agents connected in {time.monotonic() - t:.1f} s")
        deadline = time.monotonic() + 60
        hosts = Host.objects.filter(group=group)
        while hosts.filter(online=True).count() < connected and time.monotonic() < deadline:
            time.sleep(0.1)
        online = hosts.filter(online=True).count()
        emit("rollout_hosts_online", online)
        rss0 = rss_kib(server.pid)

        log(f"publishing {release.version} (max in flight {m}) ...")
        t_pub = time.time()
        rollout = group.channel.publish(release, actor="bench")[0]
        deadline = time.monotonic() + args.timeout
        status = None
        while time.monotonic() < deadline:
            status = Rollout.objects.filter(pk=rollout.pk).values_list("status", flat=True).first()
            if status not in RolloutStatus.active():
                break
            time.sleep(0.05)
        t_seen = time.time()
        rollout.refresh_from_db()
        rss1 = rss_kib(server.pid)
    finally:
        agents.stop()

    rows = list(RolloutHost.objects.filter(rollout=rollout).values("state", "granted_at", "finished_at", "host__hostname"))
    ok = [r for r in rows if r["state"] == "succeeded"]
    done = [r for r in rows if r["granted_at"] and r["finished_at"]]
    per_host = [(r["finished_at"] - r["granted_at"]).total_seconds() for r in ok]
    waves = math.ceil(n / m)
    total = (rollout.finished.timestamp() if rollout.finished else t_seen) - t_pub
    ph = p50(per_host)
    ideal = waves * ph if ph else None
    nominal = args.install_s + args.reboot_s
    emit("rollout_status", rollout.status if status not in RolloutStatus.active() else f"timeout({status})")
    emit("rollout_hosts", n)
    emit("rollout_max_in_flight", m)
    emit("rollout_waves", waves)
    emit("rollout_hosts_succeeded", len(ok))
    emit("rollout_total_s", round(total, 2))
    emit("rollout_per_host_p50_s", round(ph, 3) if ph else "n/a")
    emit("rollout_ideal_s", round(ideal, 2) if ideal else "n/a")
    emit("rollout_efficiency", round(ideal / total, 3) if ideal else "n/a")
    emit("rollout_ideal_nominal_s", round(waves * nominal, 2))
    emit("rollout_efficiency_nominal", round(waves * nominal / total, 3))
    # From the database: [granted_at, finished_at] of every host.
    observed, over = max_overlap([(r["granted_at"].timestamp(), r["finished_at"].timestamp()) for r in done], m)
    emit("rollout_max_in_flight_observed", observed)
    emit("rollout_over_limit_ms", round(1000 * over, 1))
    # From the agents: [update frame received, booted_new_version sent] (what the hosts lived through).
    agent_iv = [(r["t_frame"], r["t_booted"]) for r in agents.records if "t_frame" in r and "t_booted" in r]
    emit("rollout_max_in_flight_agents", max_overlap(agent_iv)[0])
    grants = sorted(r["granted_at"].timestamp() for r in rows if r["granted_at"])
    if grants:
        emit("rollout_publish_to_first_grant_s", round(grants[0] - t_pub, 3))
    # How long a freed slot stays empty: each later grant against the finish that freed its slot.
    finishes = sorted(r["finished_at"].timestamp() for r in done)
    gaps = []
    for g in grants[m:]:
        before = [f for f in finishes if f <= g]
        if before:
            gaps.append(g - before[-1])
    emit("rollout_regrant_gap_p50_s", round(p50(gaps), 3) if gaps else "n/a")
    recs = agents.records
    dl = [r["t_downloaded"] - r["t_frame"] for r in recs if "t_downloaded" in r]
    emit("rollout_download_p50_s", round(p50(dl), 3) if dl else "n/a")
    by_name = {r["host__hostname"]: r for r in rows}
    grant_to_frame, boot_to_done = [], []
    for i, rec in enumerate(recs):
        row = by_name.get(f"rollout-bench-{i:05d}")
        if row and row["granted_at"] and "t_frame" in rec:
            grant_to_frame.append(rec["t_frame"] - row["granted_at"].timestamp())
        if row and row["finished_at"] and "t_booted" in rec:
            boot_to_done.append(row["finished_at"].timestamp() - rec["t_booted"])
    emit("rollout_grant_to_frame_p50_s", round(p50(grant_to_frame), 3) if grant_to_frame else "n/a")
    emit("rollout_booted_to_finished_p50_s", round(p50(boot_to_done), 3) if boot_to_done else "n/a")
    emit("rollout_server_rss_delta_mib", round((rss1 - rss0) / 1024, 1))
    emit("rollout_agent_errors", sum(agents.errors.values()))
    if agents.first_error:
        log(f"first agent error: {agents.first_error}")


# -- phase 2: download throughput ---------------------------------------------------------------
class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self):
        while self.running:
            try:
                self.peak = max(self.peak, rss_kib(self.pid))
            except OSError:
                return
            time.sleep(0.01)


def run_download(args, release, host_ids, server, workdir: Path) -> None:
    k = args.concurrent
    urls = [release.download_url(h) for h in host_ids[:k]]
    size = release.size
    out = workdir / "dl"
    out.mkdir(exist_ok=True)
    total_mib = k * size / 2 ** 20

    heads: list[float] = []

    async def one(i: int, url: str):
        with open(out / f"{i}.part", "wb") as f:
            return await http_get(url, sink=f, times=heads)

    async def round_():
        return await asyncio.gather(*(one(i, u) for i, u in enumerate(urls)))

    time.sleep(1.0)
    rss0 = rss_kib(server.pid)
    sampler = RssSampler(server.pid)
    sampler.start()
    rates, bad, busy, ttfb = [], 0, [0.0, 0.0, 0.0], []
    for r in range(args.download_rounds):
        t, s0, c0 = time.perf_counter(), cpu_seconds(server.pid), time.process_time()
        heads.clear()
        results = asyncio.run(round_())
        dt = time.perf_counter() - t
        ttfb.extend(h - t for h in heads)
        busy[0] += dt
        busy[1] += cpu_seconds(server.pid) - s0
        busy[2] += time.process_time() - c0
        bad += sum(1 for status, n in results if status != 200 or n != size)
        rates.append(total_mib / dt)
        if r == 0:  # one file checked end to end (outside the timed window)
            h = hashlib.sha256()
            with open(out / "0.part", "rb") as f:
                for chunk in iter(lambda: f.read(2 ** 20), b""):
                    h.update(chunk)
            bad += h.hexdigest() != release.sha256
        shutil.rmtree(out)
        out.mkdir()
    sampler.running = False
    sampler.join()
    shutil.rmtree(out, ignore_errors=True)

    src = release.path
    cp = workdir / "cp"
    copy_rates, seq_rates = [], []
    for _ in range(args.download_rounds):
        cp.mkdir()
        t = time.perf_counter()
        with ThreadPoolExecutor(k) as pool:
            list(pool.map(lambda i: shutil.copyfile(src, cp / f"{i}.copy"), range(k)))
        copy_rates.append(total_mib / (time.perf_counter() - t))
        shutil.rmtree(cp)
        cp.mkdir()
        t = time.perf_counter()
        for i in range(k):
            shutil.copyfile(src, cp / f"{i}.copy")
        seq_rates.append(total_mib / (time.perf_counter() - t))
        shutil.rmtree(cp)

    dl, copy = statistics.median(rates), statistics.median(copy_rates)
    emit("download_concurrent", k)
    emit("download_payload_mib", round(size / 2 ** 20, 2))
    emit("download_rounds", args.download_rounds)
    emit("download_errors", bad)
    emit(f"download_{k}_mib_per_s", round(dl, 1))
    emit("copy_mib_per_s", round(copy, 1))
    emit("copy_sequential_mib_per_s", round(statistics.median(seq_rates), 1))
    emit("download_vs_copy_ratio", round(dl / copy, 3))
    emit("download_ttfb_p50_ms", round(1000 * p50(ttfb), 1))
    emit("download_ttfb_max_ms", round(1000 * max(ttfb), 1))
    emit("download_server_cpu_pct", round(100 * busy[1] / busy[0], 1))
    emit("download_client_cpu_pct", round(100 * busy[2] / busy[0], 1))
    emit("download_server_rss_before_mib", round(rss0 / 1024, 1))
    emit("download_server_rss_peak_mib", round(sampler.peak / 1024, 1))
    emit("download_server_rss_delta_mib", round((sampler.peak - rss0) / 1024, 1))
    emit("download_bytes_per_round_mib", round(total_mib, 1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--max-in-flight", type=int, default=20)
    ap.add_argument("--payload-mib", type=float, default=8)
    ap.add_argument("--install-s", type=float, default=1.0)
    ap.add_argument("--reboot-s", type=float, default=1.0)
    ap.add_argument("--concurrent", type=int, default=50, help="concurrent downloads in phase 2")
    ap.add_argument("--download-rounds", type=int, default=5, help="phase 2 repeats (median reported)")
    ap.add_argument("--worker-pool", choices=["solo", "prefork"], default="solo",
                    help="prefork runs 2 worker processes")
    ap.add_argument("--timeout", type=float, default=150, help="seconds allowed for the rollout")
    ap.add_argument("--database-url", default=None,
                    help="default: a fresh SQLite file; postgres://... uses a dedicated database "
                         "'fleetweb_bench' (dropped and created, dropped at the end)")
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    ap.add_argument("--skip-download", action="store_true")
    args = ap.parse_args()
    if args.hosts < args.concurrent and not args.skip_download:
        args.concurrent = args.hosts

    t_start = time.monotonic()
    install_cleanup()
    raise_nofile()
    workdir = new_workdir("rollout")
    db = Database(args.database_url, workdir)
    db.create()
    port = free_port()
    queue = f"fleet-bench-rollout-{uuid.uuid4().hex[:8]}"
    env = bench_env(db.url, args.redis_url, workdir, FLEET_PUBLIC_URL=f"http://127.0.0.1:{port}",
                    CELERY_TASK_DEFAULT_QUEUE=queue, FLEET_MEDIA_ROOT=workdir / "media")
    for k in ("CELERY_TASK_DEFAULT_QUEUE", "FLEET_MEDIA_ROOT", "FLEET_PUBLIC_URL"):
        os.environ[k] = env[k]

    def drop_queue():
        import redis

        r = redis.Redis.from_url(args.redis_url)
        r.delete(queue, f"_kombu.binding.{queue}")
    on_exit(drop_queue)
    setup_django(env)
    from django.conf import settings

    assert not settings.CELERY_TASK_ALWAYS_EAGER, "Celery must not run eagerly in the bench process"
    emit("rollout_database", db.kind)
    emit("rollout_worker_pool", args.worker_pool)
    emit("rollout_payload_mib", args.payload_mib)
    emit("rollout_install_s", args.install_s)
    emit("rollout_reboot_s", args.reboot_s)

    from fleetweb.fleet.models import Host
    from fleetweb.tenancy.models import Organization
    from fleetweb.updates.models import Release

    boot = bootstrap(f"rollout-{int(time.time())}", "bench")
    log(f"seeding {args.hosts} hosts ...")
    secrets = seed_hosts(boot["org"], boot["group"], args.hosts)
    org = Organization.objects.get(slug=boot["org"])
    payload = workdir / "payload.bin"
    size = int(args.payload_mib * 2 ** 20)
    with open(payload, "wb") as f:
        left = size
        while left > 0:
            f.write(os.urandom(min(left, 2 ** 20)))
            left -= min(left, 2 ** 20)
    with open(payload, "rb") as f:
        release = Release.objects.create_from_upload(org, NEW_VERSION, f, actor="bench")
    payload.unlink()

    server = start_uvicorn(env, port, workdir / "server.log")
    worker = start_worker(env, queue, workdir, args.worker_pool)
    log(f"server pid {server.pid} on 127.0.0.1:{port}, worker pid {worker.pid}, queue {queue}")
    try:
        run_rollout(args, boot, release, port, secrets, server)
        if not args.skip_download:
            log(f"downloads: {args.concurrent} concurrent × {args.download_rounds} rounds ...")
            host_ids = [str(h) for h in Host.objects.filter(organization=org).values_list("pk", flat=True)]
            run_download(args, release, host_ids, server, workdir)
        for name, path in (("server", workdir / "server.log"), ("worker", workdir / "worker.log")):
            text = path.read_text(errors="replace")
            emit(f"rollout_{name}_log_errors", text.count("Traceback"))
            if "Traceback" in text:
                log(f"{name} log tail:\n{tail(path, 40)}")
    finally:
        stop(worker)
        stop(server)
    emit("rollout_wall_s", round(time.monotonic() - t_start, 1))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: stopping everything this bench started")
        sys.exit(130)
