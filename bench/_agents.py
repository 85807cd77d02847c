"""N simulated agents in one asyncio process, driven by the bench over stdin/stdout (JSON lines).

Each agent: connect to the websocket with `Authorization: Bearer <credential>` (permessage-deflate
off), send a valid `hello`, wait for `policy`, send `status` frames with increasing `seq` on
command, and answer every `policy` frame with `event policy_applied` (as the real agent does).
Times are CLOCK_MONOTONIC, comparable with the parent's time.monotonic().
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time
import uuid

from websockets.asyncio.client import connect

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


class Agent:
    def __init__(self, swarm: Swarm, idx: int, secret: str):
        self.swarm, self.idx, self.secret = swarm, idx, secret
        self.ws = None
        self.seq = 0
        self.first_policy = asyncio.get_running_loop().create_future()
        self.reader: asyncio.Task | None = None

    async def connect(self, url: str, timeout: float) -> bool:
        try:
            self.ws = await connect(url, additional_headers={"Authorization": f"Bearer {self.secret}"},
                                    compression=None, open_timeout=timeout, ping_interval=None,
                                    close_timeout=2, max_size=2 ** 20, write_limit=4096)
        except Exception as exc:
            self.swarm.error(f"connect_{type(exc).__name__}", str(exc))
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
            self.swarm.error(f"closed_{type(exc).__name__}", str(exc))
        finally:
            if not self.first_policy.done():
                self.first_policy.set_result(None)

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

    async def send_status_for(self, until: float, rate: float) -> int:
        """Send at `rate` frames/s until `until` (an open loop: there is no per-frame ack)."""
        sent, interval = 0, 1.0 / rate
        nxt = time.monotonic() + interval * (self.idx % 97) / 97  # spread the agents over one interval
        while True:
            now = time.monotonic()
            if now >= until:
                return sent
            if nxt > now:
                await asyncio.sleep(nxt - now)
            nxt += interval
            sent += await self.send_status(1)
            await asyncio.sleep(0)  # websockets' send() may not yield: let the other agents run


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
        elif op == "close":
            agents = live()
            await asyncio.gather(*(a.ws.close() for a in agents), return_exceptions=True)
            for a in agents:
                if a.reader:
                    a.reader.cancel()
            reply(closed=len(agents))
            break
        else:
            reply(error=f"unknown command {op}")


if __name__ == "__main__":
    asyncio.run(main())
