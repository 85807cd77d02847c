"""N simulated agents in one asyncio process, driven by the bench over stdin/stdout (JSON lines).

Each agent: connect to the websocket with `Authorization: Bearer <credential>` (permessage-deflate
off), send a valid `hello`, wait for `policy`, send `status` frames with increasing `seq` on
command, and answer every `policy` frame with `event policy_applied` (as the real agent does).
After `storm_arm`, an agent whose socket drops reconnects as the real agent does: the agent's own
`Backoff` (agent/connection.py: capped exponential, jittered) before each attempt, then `hello`,
the `policy` within the agent's POLICY_TIMEOUT, and one `status`.
Times are CLOCK_MONOTONIC, comparable with the parent's time.monotonic().
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import uuid
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.config import POLICY_TIMEOUT  # noqa: E402
from agent.connection import OPEN_TIMEOUT, Backoff  # noqa: E402

PARTITIONS = [
    {"label": "USR-A", "number": 3, "version": "100.0.0", "priority": 1, "tries": 0, "successful": True,
     "active": True},
    {"label": "USR-B", "number": 4, "version": None, "priority": 0, "tries": 0, "successful": False,
     "active": False},
]


class Swarm:
    def __init__(self):
        self.agents: list[Agent] = []
        self.errors: dict[str, int] = {}
        self.first_error: str | None = None
        self.rev_counts: dict[int, int] = {}
        self.rev_last: dict[int, float] = {}
        self.rev_events: dict[int, asyncio.Event] = {}
        self.rev_targets: dict[int, int] = {}
        self.ack = True
        self.url = ""
        self.compression: str | None = None
        # reconnect storm (storm_arm / storm_wait)
        self.storm = False
        self.closing = False
        self.dropped = 0
        self.attempts = 0
        self.failed_attempts = 0
        self.reconnected = 0
        self.storm_first_t: float | None = None
        self.storm_last_t: float | None = None
        self.storm_done = asyncio.Event()
        self.storm_target = 0
        self.storm_ms: list[float] = []  # each agent's successful attempt: connect -> policy

    def error(self, kind: str, detail: str = "") -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if self.first_error is None:
            self.first_error = f"{kind}: {detail}"[:300]

    def got_policy(self, rev: int, t: float) -> None:
        self.rev_counts[rev] = self.rev_counts.get(rev, 0) + 1
        self.rev_last[rev] = max(self.rev_last.get(rev, 0.0), t)
        ev = self.rev_events.get(rev)
        if ev is not None and self.rev_counts[rev] >= self.rev_targets[rev]:
            ev.set()

    def back(self, t_connected: float, t_answered: float) -> None:
        """One dropped agent is connected again and its hello answered."""
        self.reconnected += 1
        self.storm_ms.append(round(1000 * (t_answered - t_connected), 1))
        self.storm_first_t = min(self.storm_first_t or t_connected, t_connected)
        self.storm_last_t = max(self.storm_last_t or t_answered, t_answered)
        if self.reconnected >= self.storm_target:
            self.storm_done.set()


class Agent:
    def __init__(self, swarm: Swarm, idx: int, secret: str):
        self.swarm, self.idx, self.secret = swarm, idx, secret
        self.ws = None
        self.seq = 0
        self.first_policy: asyncio.Future | None = None
        self.reader: asyncio.Task | None = None
        self.backoff = Backoff()  # the real agent's: 0.5-1 s, 1-2 s, 2-4 s ... capped at 60 s
        self.storm_task: asyncio.Task | None = None
        self.came_back = False

    async def connect(self, url: str, timeout: float, *, quiet: bool = False) -> bool:
        self.first_policy = asyncio.get_running_loop().create_future()
        try:
            self.ws = await connect(url, additional_headers={"Authorization": f"Bearer {self.secret}"},
                                    compression=self.swarm.compression,  # None, as the agent (agent/connection.py)
                                    open_timeout=timeout, ping_interval=None,
                                    close_timeout=2, max_size=2 ** 20, write_limit=4096)
        except Exception as exc:
            if not quiet:
                self.swarm.error(f"connect_{type(exc).__name__}", str(exc))
            self.first_policy.set_result(None)
            return False
        self.reader = asyncio.get_running_loop().create_task(self.read())
        return True

    async def read(self) -> None:
        ws = self.ws
        try:
            async for text in ws:
                t = time.monotonic()
                msg = json.loads(text)
                kind = msg.get("type")
                if kind == "policy":
                    self.swarm.got_policy(msg["revision"], t)
                    if not self.first_policy.done():
                        self.first_policy.set_result(t)
                    if self.swarm.ack:
                        await ws.send(json.dumps({"type": "event", "kind": "policy_applied", "data": {
                            "revision": msg["revision"], "channel": msg["channel"],
                            "reboot_strategy": msg["reboot_strategy"]}}, separators=(",", ":")))
                elif kind == "ping":
                    await ws.send(json.dumps({"type": "pong", "nonce": msg.get("nonce", "")}))
                elif kind == "error":
                    self.swarm.error(f"error_frame_{msg.get('code')}", msg.get("message", ""))
        except Exception as exc:
            if not (self.swarm.storm or self.swarm.closing):  # a storm drops every socket on purpose
                self.swarm.error(f"closed_{type(exc).__name__}", str(exc))
        finally:
            if not self.first_policy.done():
                self.first_policy.set_result(None)

    async def storm_loop(self) -> None:
        """The real agent's main loop around a session (agent/agent.py): when the session ends, wait
        ``backoff.next_delay()``, connect, hello, wait for the policy (POLICY_TIMEOUT), send a status."""
        swarm = self.swarm
        while not swarm.closing:
            if self.reader is not None:
                await asyncio.gather(self.reader, return_exceptions=True)
            if swarm.closing:
                return
            swarm.dropped += 1
            while not swarm.closing:
                await asyncio.sleep(self.backoff.next_delay())
                swarm.attempts += 1
                t_try = time.monotonic()
                if not await self.connect(swarm.url, OPEN_TIMEOUT, quiet=True):
                    swarm.failed_attempts += 1
                    continue
                try:
                    await self.ws.send(self.hello())
                    answered = await asyncio.wait_for(asyncio.shield(self.first_policy), POLICY_TIMEOUT)
                except (Exception, asyncio.TimeoutError):
                    answered = None
                if answered is None:
                    swarm.failed_attempts += 1
                    await self.ws.close()
                    await asyncio.gather(self.reader, return_exceptions=True)
                    continue
                if not self.came_back:  # counted once: a later drop is not part of this storm
                    self.came_back = True
                    swarm.back(t_try, answered)
                try:
                    await self.send_status(1)
                except Exception:
                    pass  # the reader sees the close and the outer loop starts over
                break

    def hello(self) -> str:
        return json.dumps({"type": "hello", "machine_id": uuid.uuid4().hex, "boot_id": uuid.uuid4().hex,
                           "hostname": f"agent-{self.idx}", "agent_version": "bench-1",
                           "version": "100.0.0", "partitions": PARTITIONS, "update_status": "IDLE",
                           "group": "stable", "reboot_strategy": "best-effort"}, separators=(",", ":"))

    async def send_status(self, k: int) -> int:
        sent = 0
        for _ in range(k):
            self.seq += 1
            await self.ws.send(json.dumps({"type": "status", "update_status": "IDLE", "version": "100.0.0",
                                           "seq": self.seq}, separators=(",", ":")))
            sent += 1
        return sent

    async def send_status_for(self, until: float, rate: float, stop: asyncio.Event | None = None) -> int:
        """Send at `rate` frames/s until `until` or `stop` (an open loop: there is no per-frame ack)."""
        sent, interval = 0, 1.0 / rate
        nxt = time.monotonic() + interval * (self.idx % 97) / 97  # spread the agents over one interval
        while stop is None or not stop.is_set():
            now = time.monotonic()
            if now >= until:
                return sent
            if nxt > now:
                await asyncio.sleep(nxt - now)
            nxt += interval
            sent += await self.send_status(1)
            await asyncio.sleep(0)  # websockets' send() may not yield: let the other agents run
        return sent


class Window:
    """A measurement window (bench/abuse.py): the connected agents send status frames at a fixed rate
    while new agents (``probe`` credentials, each used by one socket at a time) connect at
    ``probe_rate``/s, send hello and wait for the policy; each probe closes a second after its answer.
    ``hello_ms`` are the probes' connect-to-policy times."""

    def __init__(self, swarm: Swarm, cmd: dict):
        self.swarm, self.cmd = swarm, cmd
        self.stop = asyncio.Event()
        self.free = list(cmd.get("probe_secrets", []))
        self.hello_ms: list[float] = []
        self.probe_failed = 0
        self.probe_skipped = 0
        self.t0 = time.monotonic()
        loop = asyncio.get_running_loop()
        agents = [a for a in swarm.agents if a.ws is not None]
        self.status = asyncio.gather(
            *(a.send_status_for(float("inf"), cmd["rate"], self.stop) for a in agents), return_exceptions=True)
        self.probes: set[asyncio.Task] = set()
        self.spawner = loop.create_task(self.spawn())

    async def spawn(self) -> None:
        rate = self.cmd.get("probe_rate", 0)
        if not rate:
            return
        nxt = time.monotonic()
        while not self.stop.is_set():
            if self.free:
                task = asyncio.get_running_loop().create_task(self.probe(self.free.pop()))
                self.probes.add(task)
                task.add_done_callback(self.probes.discard)
            else:
                self.probe_skipped += 1
            nxt += 1.0 / rate
            try:
                await asyncio.wait_for(self.stop.wait(), max(0.0, nxt - time.monotonic()))
            except asyncio.TimeoutError:
                pass

    async def probe(self, secret: str) -> None:
        agent = Agent(self.swarm, -1, secret)
        t0 = time.monotonic()
        try:
            if not await agent.connect(self.cmd["url"], 60):
                self.probe_failed += 1
                return
            await agent.ws.send(agent.hello())
            t = await asyncio.wait_for(asyncio.shield(agent.first_policy), 60)
            if t is None:
                self.probe_failed += 1
                return
            self.hello_ms.append(1000 * (t - t0))  # started in the window: counts, however late its answer
            await asyncio.sleep(1.0)  # its ack goes through, as a real agent's would
        except (Exception, asyncio.TimeoutError) as exc:
            self.probe_failed += 1
            self.swarm.error(f"probe_{type(exc).__name__}", str(exc))
        finally:
            if agent.ws is not None:
                await agent.ws.close()
                if agent.reader is not None:
                    await asyncio.gather(agent.reader, return_exceptions=True)
            self.free.append(secret)

    async def finish(self) -> dict:
        self.stop.set()
        wall = time.monotonic() - self.t0
        res = await self.status
        await self.spawner
        if self.probes:
            await asyncio.wait(list(self.probes), timeout=70)
        sent = sum(r for r in res if isinstance(r, int))
        agents = [a for a in self.swarm.agents if a.ws is not None]
        return {"sent": sent, "wall": wall, "seq_sum": sum(a.seq for a in agents), "hello_ms": self.hello_ms,
                "probe_failed": self.probe_failed, "probe_skipped": self.probe_skipped}


async def main() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    swarm = Swarm()
    window: Window | None = None

    def reply(**kw) -> None:
        kw.setdefault("errors", dict(swarm.errors))
        kw.setdefault("first_error", swarm.first_error)
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    live = lambda: [a for a in swarm.agents if a.ws is not None]  # noqa: E731

    while True:
        line = await reader.readline()
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["cmd"]
        if op == "connect":
            swarm.ack = cmd.get("ack", True)
            swarm.compression = cmd.get("compression")  # "deflate": what the websockets client offers by default
            swarm.url = cmd["url"]
            secrets = cmd["secrets"]
            sem = asyncio.Semaphore(cmd.get("concurrency", 256))
            agents = [Agent(swarm, i, s) for i, s in enumerate(secrets)]
            swarm.agents = agents

            timeout = cmd.get("timeout", 60)

            async def one(a, sem=sem, url=cmd["url"], timeout=timeout):
                async with sem:
                    return await a.connect(url, timeout)

            t0 = time.monotonic()
            ok = await asyncio.gather(*(one(a) for a in agents))
            reply(connected=sum(ok), failed=len(ok) - sum(ok), connect_s=time.monotonic() - t0)
        elif op == "hello":
            agents = live()
            t0 = time.monotonic()
            await asyncio.gather(*(a.ws.send(a.hello()) for a in agents), return_exceptions=True)
            sent_s = time.monotonic() - t0
            done, _ = await asyncio.wait([a.first_policy for a in agents], timeout=cmd.get("timeout", 180))
            times = [f.result() for f in done if f.result() is not None]
            reply(answered=len(times), sent_s=sent_s, t0=t0, last_t=max(times) if times else None,
                  hello_s=(max(times) - t0) if times else None)
        elif op == "status":
            agents = live()
            t0 = time.monotonic()
            res = await asyncio.gather(*(a.send_status(cmd["k"]) for a in agents), return_exceptions=True)
            sent = sum(r for r in res if isinstance(r, int))
            reply(sent=sent, t0=t0, send_s=time.monotonic() - t0, seq_sum=sum(a.seq for a in agents))
        elif op == "status_for":
            agents = live()
            t0 = time.monotonic()
            until = t0 + cmd["duration"]
            res = await asyncio.gather(*(a.send_status_for(until, cmd["rate"]) for a in agents),
                                       return_exceptions=True)
            sent = sum(r for r in res if isinstance(r, int))
            reply(sent=sent, t0=t0, send_s=time.monotonic() - t0, seq_sum=sum(a.seq for a in agents))
        elif op == "wait_policy":
            rev, target = cmd["revision"], len(live())
            swarm.rev_targets[rev] = target
            ev = swarm.rev_events.setdefault(rev, asyncio.Event())
            if swarm.rev_counts.get(rev, 0) >= target:
                ev.set()
            try:
                await asyncio.wait_for(ev.wait(), cmd.get("timeout", 120))
            except asyncio.TimeoutError:
                pass
            reply(got=swarm.rev_counts.get(rev, 0), target=target, last_t=swarm.rev_last.get(rev))
        elif op == "stats":
            from websockets.protocol import State

            reply(open=sum(1 for a in live() if a.ws.state is State.OPEN), total=len(swarm.agents))
        elif op == "storm_arm":
            # From now on a dropped socket is an expected event: each agent reconnects on its own.
            agents = [a for a in live() if a.first_policy.done() and a.first_policy.result() is not None]
            swarm.storm, swarm.storm_target = True, len(agents)
            for a in agents:
                a.storm_task = loop.create_task(a.storm_loop())
            reply(armed=len(agents))
        elif op == "storm_wait":
            try:
                await asyncio.wait_for(swarm.storm_done.wait(), cmd.get("timeout", 300))
            except asyncio.TimeoutError:
                pass
            reply(reconnected=swarm.reconnected, target=swarm.storm_target, dropped=swarm.dropped,
                  attempts=swarm.attempts, failed_attempts=swarm.failed_attempts,
                  first_t=swarm.storm_first_t, last_t=swarm.storm_last_t, hello_ms=swarm.storm_ms)
        elif op == "window_start":
            window = Window(swarm, cmd)
            reply(started=window.t0)
        elif op == "window_stop":
            reply(**(await window.finish() if window else {"error": "no window"}))
            window = None
        elif op == "close":
            swarm.closing = True
            agents = live()
            await asyncio.gather(*(a.ws.close() for a in agents), return_exceptions=True)
            for a in agents:
                if a.reader:
                    a.reader.cancel()
                if a.storm_task:
                    a.storm_task.cancel()
            reply(closed=len(agents))
            break
        else:
            reply(error=f"unknown command {op}")


if __name__ == "__main__":
    asyncio.run(main())
