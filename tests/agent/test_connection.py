"""Backoff of the connection state machine (agent/connection.py)."""
from __future__ import annotations

import random

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close

from agent import protocol
from agent.connection import Backoff, Connection, State, is_auth_close, is_rate_limited_close


def test_it_backs_off_exponentially_with_jitter_up_to_the_cap():
    b = Backoff(initial=1, cap=60, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(10)]
    bases = [min(60, 2 ** i) for i in range(10)]
    assert all(base / 2 <= d <= base for d, base in zip(delays, bases, strict=True))
    assert max(delays) <= 60 and delays[-1] >= 30
    b.reset()
    assert b.next_delay() <= 1


def test_it_waits_long_after_an_auth_failure():
    b = Backoff(rng=random.Random(2))
    assert all(60 <= b.auth_delay() <= 300 for _ in range(20))


def test_it_starts_disconnected_and_logs_each_transition(caplog):
    conn = Connection("ws://127.0.0.1:1/", "cred")
    assert conn.state is State.DISCONNECTED
    with caplog.at_level("INFO", logger="agent.connection"):
        conn.transition(State.CONNECTING, "test")
        conn.transition(State.CONNECTING, "again")          # no-op, no line
    assert [r.getMessage() for r in caplog.records] == ["connection DISCONNECTED -> CONNECTING (test)"]


def test_a_4429_close_backs_off_near_the_cap():
    closed = ConnectionClosed(Close(protocol.CLOSE_RATE_LIMITED, "too many frames"), None)
    assert is_rate_limited_close(closed) and not is_auth_close(closed)
    assert not is_rate_limited_close(ConnectionClosed(Close(1000, "bye"), None))
    b = Backoff(initial=1, cap=60, rng=random.Random(3))
    b.rate_limited()
    assert all(30 <= b.next_delay() <= 60 for _ in range(5))


async def test_the_agent_does_not_offer_per_message_deflate():
    """A compressed socket costs the server a zlib state per agent (bench/fanin.py: 58 KiB per
    connection instead of 25 at 5,000 agents): the agent's handshake offers no extension."""
    requests = []

    async def handler(ws):
        await ws.wait_closed()

    def record(connection, request):
        requests.append(request)

    async with serve(handler, "127.0.0.1", 0, process_request=record) as server:
        port = server.sockets[0].getsockname()[1]
        conn = Connection(f"ws://127.0.0.1:{port}/ws/agent/", "fwh_test")
        await conn.open()
        try:
            assert conn.state is State.HANDSHAKING
            assert conn.ws.protocol.extensions == []
        finally:
            await conn.ws.close()
    assert len(requests) == 1
    assert requests[0].headers["Authorization"] == "Bearer fwh_test"
    assert "Sec-WebSocket-Extensions" not in requests[0].headers
