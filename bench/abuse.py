#!/usr/bin/env python
"""Abuse: what each kind of abuse costs the agents and the API of one web process.

One uvicorn process (PostgreSQL or SQLite, Redis, a real etcd behind a proxy that can turn into a
black hole) holds a few hundred simulated agents (bench/_agents.py) that send status frames at a
fixed rate.  In each window, new agents connect and say hello (`hello_p99_ms`, connect -> policy),
the status frames that reach the database are counted (`status_per_s`), and GET /api/v1/hosts/ with
an API key is timed (`hosts_list_p99_ms`): first idle, then while each abuse runs:

  login        20 login attempts/s (real POSTs with CSRF, wrong passwords) for a few usernames, from
               40 client addresses: django-axes locks them; the figures say which
  login_spray  the same rate, every attempt a new username from a new address: nothing can be
               locked, every attempt is hashed
  upload       a 2 GiB release upload through the API (generated on the fly, deleted afterwards)
  etcd         etcd unreachable (the proxy accepts TCP and never answers) with the locks page open
               in 5 signed-in sessions, fetched again as soon as it answers
  watches      500 open discovery watches (GET /discovery/<token>?wait=true with an API key)

then idle again (`idle_end_*`: how much the machine moved).  `ratio_<abuse>_*` = abuse / idle.

    .venv/bin/python bench/abuse.py [--database-url postgres://postgres@127.0.0.1:5432/fw_bench]
        [--agents 300] [--status-rate 1000] [--window 30] [--abuses login,login_spray,upload,etcd,watches]

Prints name=value lines on stdout (see bench/README.md), progress on stderr.  Not a test.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import (  # noqa: E402
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
    on_exit,
    pct,
    raise_nofile,
    seed_hosts,
    setup_django,
    start_uvicorn,
    stop,
    tail,
)
from fanin import Swarm  # noqa: E402

ABUSES = ("login", "login_spray", "upload", "etcd", "watches")
LOGIN_USERNAMES = ("root", "admin", "operator", "deploy", "fleet", "support", "ops")


# -- a small HTTP/1.1 client: status, headers and body; Connection: close; optional source address ---
async def http(port: int, method: str, path: str, *, headers: dict | None = None, body: bytes | None = None,
               source: str | None = None, timeout: float = 60.0, on_sent=None):
    async def go():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0) if source else None)
        try:
            h = {"Host": f"127.0.0.1:{port}", "Connection": "close", "User-Agent": "fleetweb-bench-abuse",
                 **(headers or {})}
            if body is not None:
                h["Content-Length"] = str(len(body))
            head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
            writer.write(head.encode() + (body or b""))
            await writer.drain()
            if on_sent:
                on_sent()
            data = await reader.read()
        finally:
            writer.close()
        return parse_response(data)

    return await asyncio.wait_for(go(), timeout)


def parse_response(data: bytes):
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.setdefault(k.strip().lower(), []).append(v.strip())
    return status, headers, body


def cookie(headers: dict, name: str) -> str | None:
    for value in headers.get("set-cookie", []):
        k, _, rest = value.partition("=")
        if k.strip() == name:
            return rest.split(";", 1)[0]
    return None


CSRF_RE = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


async def login(port: int, username: str, password: str, source: str | None = None, timeout: float = 60.0):
    """GET /login/ (CSRF cookie and token), then POST the form; returns (status, headers, body, POST seconds)."""
    status, headers, body = await http(port, "GET", "/login/", source=source, timeout=timeout)
    m, csrf = CSRF_RE.search(body), cookie(headers, "csrftoken")
    if status != 200 or not m or not csrf:
        raise RuntimeError(f"GET /login/ -> {status}")
    form = urlencode({"csrfmiddlewaretoken": m.group(1).decode(), "username": username, "password": password,
                      "next": "/"}).encode()
    t = time.monotonic()
    status, headers, body = await http(port, "POST", "/login/", source=source, timeout=timeout, body=form, headers={
        "Cookie": f"csrftoken={csrf}", "Content-Type": "application/x-www-form-urlencoded"})
    return status, headers, body, time.monotonic() - t


# -- etcd behind a gate ---------------------------------------------------------------------------
class EtcdGate:
    """A TCP proxy in front of etcd (its own thread and loop).  Closed, it still accepts connections
    but forwards nothing on new or existing ones: etcd as a partition or a hung host makes it
    unreachable (the TCP handshake succeeds, nothing ever answers).  Opened again, what it held goes
    through."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self._open: asyncio.Event | None = None
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True, name="etcd-gate")
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve():
            self._open = asyncio.Event()
            self._open.set()
            await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            ready.set()

        self.loop.run_until_complete(serve())
        self.loop.run_forever()

    async def _handle(self, reader, writer) -> None:
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    async def _pump(self, src, dst) -> None:
        while data := await src.read(65536):
            await self._open.wait()
            dst.write(data)
            await dst.drain()

    def blackhole(self, on: bool) -> None:
        self.loop.call_soon_threadsafe(self._open.clear if on else self._open.set)


# -- the host-list prober, in its own thread (an abuse running in the main loop must not delay it) ---
class Prober:
    def __init__(self, port: int, api_key: str, interval: float):
        self.port, self.interval = port, interval
        self.headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
        self.stop = threading.Event()
        self.ms: list[float] = []
        self.errors: dict[str, int] = {}
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True, name="prober")
        self.thread.start()

    async def _run(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                status, _, body = await http(self.port, "GET", "/api/v1/hosts/?page=1", headers=self.headers,
                                             timeout=120)
                if status == 200:
                    self.ms.append(1000 * (time.monotonic() - t))
                else:
                    self.errors[f"http_{status}"] = self.errors.get(f"http_{status}", 0) + 1
            except Exception as exc:
                self.errors[type(exc).__name__] = self.errors.get(type(exc).__name__, 0) + 1
            self.stop.wait(self.interval)

    def finish(self) -> tuple[list[float], dict]:
        self.stop.set()
        self.thread.join(130)
        return self.ms, self.errors


# -- the abuses: each runs until `stop` is set, calls `ready()` once it is in full swing ---------------
class Abuse:
    name = ""
    bounded = False  # True: the window lasts as long as the abuse (the upload), not --window seconds

    def __init__(self, bench: Bench):
        self.bench = bench
        self.stats: dict = {}
        self.stop = asyncio.Event()
        self.is_ready = asyncio.Event()
        self.done = asyncio.Event()

    def count(self, key: str, n: int = 1) -> None:
        self.stats[key] = self.stats.get(key, 0) + n

    async def run(self) -> None:
        raise NotImplementedError

    async def cleanup(self) -> None:
        pass


class LoginAbuse(Abuse):
    """Open loop: an attempt every 1/rate s, whatever the earlier ones are doing (a client gives up
    after 30 s, which closes its connection)."""

    name = "login"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.post_ms: dict[str, list[float]] = {}
        self.n = 0

    def target(self, i: int) -> tuple[str, str]:
        users = [self.bench.boot["user"], *LOGIN_USERNAMES][:self.bench.args.login_usernames]
        return users[i % len(users)], f"127.0.1.{1 + i % 40}"

    async def attempt(self, i: int) -> None:
        username, source = self.target(i)
        try:
            status, _, body, post_s = await login(self.bench.port, username, f"wrong-{uuid.uuid4().hex[:8]}",
                                                  source, timeout=30)
        except (asyncio.TimeoutError, TimeoutError):
            self.count("timeout")
            return
        except Exception as exc:
            self.count(f"error_{type(exc).__name__}")
            return
        outcome = {200: "refused", 429: "locked", 302: "signed_in"}.get(status, f"http_{status}")
        self.count(outcome)
        self.post_ms.setdefault(outcome, []).append(1000 * post_s)

    async def run(self) -> None:
        tasks: set[asyncio.Task] = set()
        interval = 1.0 / self.bench.args.login_rate
        nxt = time.monotonic()
        self.is_ready.set()
        while not self.stop.is_set():
            task = asyncio.ensure_future(self.attempt(self.n))
            self.n += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            nxt += interval
            try:
                await asyncio.wait_for(self.stop.wait(), max(0.0, nxt - time.monotonic()))
            except asyncio.TimeoutError:
                pass
        self.stats["attempts"] = self.n
        self.stats["in_flight_at_end"] = len(tasks)
        for task in tasks:  # closes their connections: the server drops the queued requests
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def report(self, p: str) -> None:
        for key in ("attempts", "refused", "locked", "signed_in", "timeout", "in_flight_at_end"):
            emit(f"{p}_{key}", self.stats.get(key, 0))
        for key, value in self.stats.items():
            if key.startswith(("http_", "error_")):
                emit(f"{p}_{key}", value)
        for outcome, values in self.post_ms.items():
            emit(f"{p}_{outcome}_post_p50_ms", round(pct(values, 50), 1))
            emit(f"{p}_{outcome}_post_p99_ms", round(pct(values, 99), 1))


class LoginSprayAbuse(LoginAbuse):
    name = "login_spray"

    def target(self, i: int) -> tuple[str, str]:
        return f"spray-{uuid.uuid4().hex[:10]}", f"127.2.{i // 250 % 250}.{1 + i % 250}"


class UploadAbuse(Abuse):
    name = "upload"
    bounded = True
    version = "2000.0.1"

    async def run(self) -> None:
        args, bench = self.bench.args, self.bench
        size = args.upload_mib * 1024 * 1024
        block = os.urandom(1024 * 1024)
        boundary = f"bench{uuid.uuid4().hex}"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"version\"\r\n\r\n{self.version}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"payload\"; filename=\"usr.img\"\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode()
        tail_ = f"\r\n--{boundary}--\r\n".encode()
        length = len(head) + size + len(tail_)
        reader, writer = await asyncio.open_connection("127.0.0.1", bench.port)
        t0 = time.monotonic()
        try:
            writer.write((f"POST /api/v1/releases/ HTTP/1.1\r\nHost: 127.0.0.1:{bench.port}\r\n"
                          f"Authorization: Bearer {bench.boot['api_key']}\r\nConnection: close\r\n"
                          f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                          f"Content-Length: {length}\r\n\r\n").encode() + head)
            self.is_ready.set()
            sent = 0
            while sent < size:
                chunk = block if size - sent >= len(block) else block[:size - sent]
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            writer.write(tail_)
            await writer.drain()
            self.stats["send_s"] = time.monotonic() - t0
            data = await asyncio.wait_for(reader.read(), 1800)
            status, _, body = parse_response(data)
            self.stats["status"] = status
            if status != 201:
                log(f"upload -> {status}: {body[:300]!r}")
        finally:
            writer.close()
            self.stats["total_s"] = time.monotonic() - t0
            self.stats["mib"] = args.upload_mib
            self.done.set()

    async def cleanup(self) -> None:
        await asyncio.to_thread(self._delete)

    def _delete(self) -> None:
        """Nothing of the 2 GiB stays on disk: the release and its payload, and any temporary file."""
        from django.conf import settings

        from fleetweb.updates.models import Release

        for release in Release.objects.filter(organization__slug=self.bench.boot["org"], version=self.version):
            (Path(settings.FLEET_MEDIA_ROOT) / release.payload).unlink(missing_ok=True)
            release.delete()
        for leftover in (self.bench.workdir / "tmp").glob("*"):
            leftover.unlink(missing_ok=True)

    def report(self, p: str) -> None:
        emit(f"{p}_status", self.stats.get("status", "none"))
        emit(f"{p}_mib", self.stats.get("mib"))
        for key in ("send_s", "total_s"):
            if key in self.stats:
                emit(f"{p}_{key}", round(self.stats[key], 2))
        if self.stats.get("total_s"):
            emit(f"{p}_mib_per_s", round(self.stats["mib"] / self.stats["total_s"], 1))


class EtcdAbuse(Abuse):
    name = "etcd"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.ms: list[float] = []

    async def session(self, sessionid: str) -> None:
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                status, _, _ = await http(self.bench.port, "GET", "/locks/", timeout=120,
                                          headers={"Cookie": f"sessionid={sessionid}"})
                self.count(f"http_{status}")
                self.ms.append(1000 * (time.monotonic() - t))
            except Exception as exc:
                self.count(f"error_{type(exc).__name__}")

    async def run(self) -> None:
        self.bench.gate.blackhole(True)
        tasks = [asyncio.ensure_future(self.session(s)) for s in self.bench.sessions]
        self.is_ready.set()
        await self.stop.wait()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def cleanup(self) -> None:
        self.bench.gate.blackhole(False)

    def report(self, p: str) -> None:
        emit(f"{p}_sessions", len(self.bench.sessions))
        emit(f"{p}_locks_page_fetches", len(self.ms))
        for key, value in self.stats.items():
            emit(f"{p}_locks_page_{key}", value)
        if self.ms:
            emit(f"{p}_locks_page_p50_ms", round(pct(self.ms, 50), 1))


class WatchAbuse(Abuse):
    name = "watches"

    def __init__(self, bench: Bench):
        super().__init__(bench)
        self.sent = 0

    def on_sent(self) -> None:
        self.sent += 1
        if self.sent >= self.bench.args.watches:
            self.is_ready.set()

    async def watch(self, token: str) -> None:
        headers = {"Authorization": f"Bearer {self.bench.boot['api_key']}"}
        first = True
        while not self.stop.is_set():
            t = time.monotonic()
            try:
                status, _, body = await http(self.bench.port, "GET", f"/discovery/{token}?wait=true&waitIndex=1000000",
                                             headers=headers, timeout=120, on_sent=self.on_sent if first else None)
            except Exception as exc:
                self.count(f"error_{type(exc).__name__}")
                await asyncio.sleep(1)
                continue
            finally:
                first = False
            # an empty 200 after the server's wait (50 s) is a watch doing its job: ask again
            if status == 200 and not body and time.monotonic() - t > 30:
                self.count("expired_and_renewed")
            else:
                self.count(f"answered_early_http_{status}")
                await asyncio.sleep(1)

    async def run(self) -> None:
        tokens = self.bench.tokens
        tasks = [asyncio.ensure_future(self.watch(tokens[i % len(tokens)])) for i in range(self.bench.args.watches)]
        await self.stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def report(self, p: str) -> None:
        emit(f"{p}_watches", self.bench.args.watches)
        emit(f"{p}_tokens", len(self.bench.tokens))
        emit(f"{p}_requests_sent", self.sent)
        for key, value in self.stats.items():
            emit(f"{p}_{key}", value)


KINDS = {cls.name: cls for cls in (LoginAbuse, LoginSprayAbuse, UploadAbuse, EtcdAbuse, WatchAbuse)}


# -- the bench ------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args, port: int, server, boot: dict, workdir: Path, gate: EtcdGate, swarm: Swarm,
                 resident_ids: list, probe_secrets: list[str]):
        self.args, self.port, self.server, self.boot, self.workdir = args, port, server, boot, workdir
        self.gate, self.swarm, self.resident_ids, self.probe_secrets = gate, swarm, resident_ids, probe_secrets
        self.sessions: list[str] = []
        self.tokens: list[str] = []
        self.figures: dict[str, dict] = {}
        self.agent_url = f"ws://127.0.0.1:{port}/ws/agent/"
        self.agent_rate = args.status_rate / args.agents

    def status_sum(self) -> int:
        from django.db.models import Sum

        from fleetweb.fleet.models import Host

        return Host.objects.filter(pk__in=self.resident_ids).aggregate(s=Sum("status_seq"))["s"] or 0

    async def prepare(self) -> None:
        """Signed-in dashboard sessions (before any login abuse locks the user) and discovery tokens."""
        for _ in range(self.args.lock_sessions):
            status, headers, _, _ = await login(self.port, self.boot["user"], "bench-password")
            sid = cookie(headers, "sessionid")
            if status != 302 or not sid:
                raise RuntimeError(f"could not sign in: POST /login/ -> {status}")
            self.sessions.append(sid)
        per_token = 100
        for _ in range(-(-self.args.watches // per_token)):
            status, _, body = await http(self.port, "GET", "/discovery/new?size=3",
                                         headers={"Authorization": f"Bearer {self.boot['api_key']}"})
            if status != 200:
                raise RuntimeError(f"GET /discovery/new -> {status}: {body[:200]!r}")
            self.tokens.append(body.decode().strip().rsplit("/", 1)[1])

    async def window(self, phase: str, abuse: Abuse | None) -> dict:
        args = self.args
        task = None
        if abuse is not None:
            task = asyncio.ensure_future(abuse.run())
            await asyncio.wait([task, asyncio.ensure_future(abuse.is_ready.wait())],
                               return_when=asyncio.FIRST_COMPLETED, timeout=120)
            if phase == "watches":
                await asyncio.sleep(2)  # the last requests reach the server and start waiting
        log(f"[{phase}] measuring ...")
        seq0 = await asyncio.to_thread(self.status_sum)
        t0, cpu0, me0, load0 = time.monotonic(), cpu_seconds(self.server.pid), time.process_time(), loadavg()
        await asyncio.to_thread(self.swarm.call, cmd="window_start", url=self.agent_url, rate=self.agent_rate,
                                probe_secrets=self.probe_secrets, probe_rate=args.probe_rate)
        prober = Prober(self.port, self.boot["api_key"], args.list_interval)
        if abuse is not None and abuse.bounded:
            await asyncio.wait([task], timeout=1800)
        else:
            await asyncio.sleep(args.window)
        # The window ends here; requests and hellos still in flight count with their full latency.
        seq1 = await asyncio.to_thread(self.status_sum)
        t1, cpu1, me1 = time.monotonic(), cpu_seconds(self.server.pid), time.process_time()
        r = await asyncio.to_thread(self.swarm.call, cmd="window_stop")
        list_ms, list_errors = await asyncio.to_thread(prober.finish)
        if abuse is not None:
            abuse.stop.set()
            await asyncio.gather(task, return_exceptions=True)
            if task.done() and not task.cancelled() and task.exception():
                log(f"[{phase}] the abuse failed: {task.exception()!r}")
        t_stop = time.monotonic()
        wall = t1 - t0
        out = {"hello_p99_ms": pct(r["hello_ms"], 99), "status_per_s": (seq1 - seq0) / wall,
               "hosts_list_p99_ms": pct(list_ms, 99), "hosts_list_p50_ms": pct(list_ms, 50)}
        p = phase
        emit(f"{p}_window_s", round(wall, 1))
        emit(f"{p}_loadavg", f"{load0}-{loadavg()}")
        emit(f"{p}_hello_n", len(r["hello_ms"]))
        emit(f"{p}_hello_p50_ms", round(pct(r["hello_ms"], 50), 1) if r["hello_ms"] else "n/a")
        emit(f"{p}_hello_p99_ms", round(out["hello_p99_ms"], 1) if r["hello_ms"] else "n/a")
        emit(f"{p}_hello_failed", r["probe_failed"] + r["probe_skipped"])
        emit(f"{p}_status_offered_per_s", round(r["sent"] / r["wall"], 1))
        emit(f"{p}_status_per_s", round(out["status_per_s"], 1))
        emit(f"{p}_hosts_list_n", len(list_ms))
        emit(f"{p}_hosts_list_p50_ms", round(pct(list_ms, 50), 1) if list_ms else "n/a")
        emit(f"{p}_hosts_list_p99_ms", round(out["hosts_list_p99_ms"], 1) if list_ms else "n/a")
        emit(f"{p}_hosts_list_errors", sum(list_errors.values()))
        if list_errors:
            log(f"[{phase}] host list errors: {list_errors}")
        emit(f"{p}_cpu_server_pct", round(100 * (cpu1 - cpu0) / wall, 1))
        emit(f"{p}_cpu_bench_pct", round(100 * (me1 - me0) / wall, 1))
        emit(f"{p}_agent_errors", sum(r["errors"].values()))
        if r.get("first_error"):
            log(f"[{phase}] agent-side errors {r['errors']}; first: {r['first_error']}")
        if abuse is not None:
            abuse.report(p)
            await abuse.cleanup()
        self.figures[phase] = out
        # What the abuse left queued drains before the next window: the host list answers fast again.
        idle_p50 = (self.figures.get("idle") or out)["hosts_list_p50_ms"] or 0
        recovered = await self.recovered(max(1000.0, 3 * idle_p50))
        emit(f"{p}_recovery_s", round(recovered - t_stop, 1) if recovered else "timeout")
        return out

    async def recovered(self, fast_ms: float, timeout: float = 300.0) -> float | None:
        """Wait until GET /api/v1/hosts/ answers within FAST_MS; returns when (None on timeout)."""
        headers = {"Authorization": f"Bearer {self.boot['api_key']}", "Accept": "application/json"}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            t = time.monotonic()
            try:
                status, _, _ = await http(self.port, "GET", "/api/v1/hosts/?page=1", headers=headers,
                                          timeout=max(1.0, deadline - t))
                if status == 200 and 1000 * (time.monotonic() - t) <= fast_ms:
                    return time.monotonic()
            except Exception:
                pass
            await asyncio.sleep(0.2)
        return None

    async def locked(self) -> None:
        """Who django-axes locked (usernames and client addresses with FLEET_LOGIN_FAILURE_LIMIT failures)."""
        def query():
            from axes.models import AccessAttempt
            from django.conf import settings
            from django.db.models import Sum

            limit = settings.AXES_FAILURE_LIMIT
            users = (AccessAttempt.objects.values("username").annotate(n=Sum("failures_since_start"))
                     .filter(n__gte=limit).order_by("username"))
            addresses = (AccessAttempt.objects.values("ip_address").annotate(n=Sum("failures_since_start"))
                         .filter(n__gte=limit))
            return [u["username"] for u in users], addresses.count()

        users, addresses = await asyncio.to_thread(query)
        emit("axes_locked_usernames", ",".join(users) or "none")
        emit("axes_locked_usernames_count", len(users))
        emit("axes_locked_addresses", addresses)


    async def run_phases(self) -> None:
        await self.prepare()
        emit("abuse_lock_sessions", len(self.sessions))
        phases = ["idle", *[a.strip() for a in self.args.abuses.split(",") if a.strip()], "idle_end"]
        for phase in phases:
            log(f"[{phase}] starting ...")
            abuse = KINDS[phase](self) if phase in KINDS else None
            await self.window(phase, abuse)
            if phase.startswith("login"):
                await self.locked()
            await asyncio.sleep(self.args.settle)
        idle = self.figures["idle"]
        for phase in phases[1:]:
            f = self.figures[phase]
            for key in ("hello_p99_ms", "status_per_s", "hosts_list_p99_ms"):
                emit_ratio(f"ratio_{phase}_{key}", f[key], idle[key])


def run(args, env: dict, workdir: Path, port: int, gate: EtcdGate) -> None:
    from fleetweb.fleet.models import HostCredential

    for abuse in [a.strip() for a in args.abuses.split(",") if a.strip()]:
        if abuse not in KINDS:
            raise SystemExit(f"--abuses: unknown abuse {abuse!r} (known: {', '.join(ABUSES)})")
    boot = bootstrap("abuse", "bench")
    log(f"seeding {args.agents} agents and {args.probe_hosts} probe hosts ...")
    residents = seed_hosts(boot["org"], boot["group"], args.agents, prefix="r")
    probes = seed_hosts(boot["org"], boot["group"], args.probe_hosts, prefix="p")
    resident_ids = list(HostCredential.objects.filter(lookup__in=[s.split("_")[1] for s in residents])
                        .values_list("host_id", flat=True))
    server_log = workdir / "server.log"
    server = start_uvicorn(env, port, server_log)
    swarm = Swarm(workdir, "abuse")
    try:
        bench = Bench(args, port, server, boot, workdir, gate, swarm, resident_ids, probes)
        swarm.call(cmd="connect", url=bench.agent_url, secrets=residents, concurrency=64, timeout=120)
        r = swarm.call(cmd="hello", timeout=120)
        emit("abuse_agents", r["answered"])
        try:
            import uvloop

            uvloop.run(bench.run_phases())
        except ImportError:
            asyncio.run(bench.run_phases())
        text = server_log.read_text(errors="replace")
        emit("abuse_server_log_errors", text.count("Traceback"))
        if "Traceback" in text:
            log(f"server log tail:\n{tail(server_log, 40)}")
    finally:
        swarm.close()
        stop(server)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default=None,
                    help="default: a fresh SQLite file; postgres://.../NAME uses the database NAME "
                         "(dropped and created, dropped at the end)")
    ap.add_argument("--redis-url", default=DEFAULT_REDIS)
    ap.add_argument("--abuses", default=",".join(ABUSES), help="comma list, run in this order between idle windows")
    ap.add_argument("--agents", type=int, default=300, help="connected agents sending status frames")
    ap.add_argument("--status-rate", type=float, default=1000.0, help="status frames/s the agents offer in all")
    ap.add_argument("--probe-rate", type=float, default=5.0, help="new agents (connect + hello) per second")
    ap.add_argument("--probe-hosts", type=int, default=200, help="credentials the new agents take turns with")
    ap.add_argument("--list-interval", type=float, default=0.2, help="pause between two host-list requests")
    ap.add_argument("--window", type=float, default=30.0, help="seconds per window (the upload: its duration)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds between windows")
    ap.add_argument("--login-rate", type=float, default=20.0)
    ap.add_argument("--login-usernames", type=int, default=8,
                    help="usernames the login abuse tries (the bench's admin user first)")
    ap.add_argument("--upload-mib", type=int, default=2048)
    ap.add_argument("--lock-sessions", type=int, default=5)
    ap.add_argument("--watches", type=int, default=500)
    args = ap.parse_args()

    install_cleanup()
    raise_nofile()
    workdir = new_workdir("abuse")
    (workdir / "tmp").mkdir()
    db = Database(args.database_url, workdir)
    db.create()
    from scripts.services import start_etcd

    etcd = start_etcd()
    on_exit(etcd.stop)
    gate = EtcdGate(etcd.port)
    port = free_port()
    env = bench_env(db.url, args.redis_url, workdir, FLEET_PUBLIC_URL=f"http://127.0.0.1:{port}",
                    ETCD_ENDPOINTS=f"http://127.0.0.1:{gate.port}", TMPDIR=workdir / "tmp")
    setup_django(env)
    emit("abuse_database", db.kind)
    emit("abuse_loadavg_start", loadavg())
    t0 = time.monotonic()
    run(args, env, workdir, port, gate)
    emit("abuse_loadavg_end", loadavg())
    emit("abuse_wall_s", round(time.monotonic() - t0, 1))


if __name__ == "__main__":
    os.chdir(Path(__file__).resolve().parents[1])
    try:
        main()
    except KeyboardInterrupt:
        log("interrupted: stopping everything this bench started")
        sys.exit(130)
