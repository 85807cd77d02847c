"""The baseline: a bare `websockets` server doing no work (DESIGN §5's reference point).

Agents (any path but /control): a `hello` is answered with a fixed `policy` frame, `status`
frames are only counted, `event` frames are ignored (nothing is stored anywhere).
/control (the bench): "count" -> status frames received so far; "broadcast" -> a policy frame with
the next revision to every agent socket, then "sent".  Prints READY when listening.

    _baseline_server.py PORT [--reuse-port --control-port CPORT]

With ``--reuse-port`` several of these share PORT (SO_REUSEPORT: the kernel spreads connections over
them, as several web processes behind one port); each answers /control on its own CPORT too.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource

from websockets.asyncio.server import broadcast, serve

STATE = {"status": 0, "events": 0, "revision": 1}
AGENTS: set = set()


def policy(rev: int) -> str:
    return json.dumps({"type": "policy", "revision": rev, "group": "bench", "channel": "stable",
                       "reboot_strategy": "best-effort", "reboot_window_start": None,
                       "reboot_window_length": None, "etcd_endpoints": [], "lock_group": "bench",
                       "heartbeat_interval": 86400}, separators=(",", ":"))


async def handler(ws):
    if ws.request.path == "/control":
        async for msg in ws:
            if msg == "count":
                await ws.send(json.dumps({"status": STATE["status"], "events": STATE["events"],
                                          "agents": len(AGENTS)}))
            elif msg == "broadcast":
                STATE["revision"] += 1
                broadcast(AGENTS, policy(STATE["revision"]))
                await ws.send(json.dumps({"revision": STATE["revision"]}))
        return
    if not ws.request.headers.get("Authorization", "").startswith("Bearer "):
        await ws.close(4401)
        return
    AGENTS.add(ws)
    try:
        async for text in ws:
            msg = json.loads(text)
            kind = msg.get("type")
            if kind == "status":
                STATE["status"] += 1
            elif kind == "hello":
                await ws.send(policy(STATE["revision"]))
            elif kind == "event":
                STATE["events"] += 1
    except Exception:
        pass
    finally:
        AGENTS.discard(ws)


async def main(port: int, reuse_port: bool, control_port: int | None) -> None:
    opts = {"compression": None, "ping_interval": None, "max_size": 2 ** 20, "backlog": 4096}
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serve(handler, "127.0.0.1", port, reuse_port=reuse_port, **opts))
        if control_port:
            await stack.enter_async_context(serve(handler, "127.0.0.1", control_port, **opts))
        print("READY", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--reuse-port", action="store_true")
    ap.add_argument("--control-port", type=int)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    import uvloop

    uvloop.run(main(args.port, args.reuse_port, args.control_port))
