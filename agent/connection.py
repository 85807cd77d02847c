"""The server connection: an explicit state machine with capped exponential backoff and jitter.

CONNECTING → HANDSHAKING → READY → DISCONNECTED (→ CONNECTING …).  One log line per transition.
An auth failure (HTTP 401/403 on the websocket handshake, or close code 4401) is not retried at
full speed: the next attempt waits a long, jittered delay.
"""
from __future__ import annotations

import enum
import logging
import random

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from agent.protocol import CLOSE_RATE_LIMITED, CLOSE_REPLACED, CLOSE_REVOKED, CLOSE_UNAUTHORIZED

log = logging.getLogger("agent.connection")

OPEN_TIMEOUT = 15.0
# No per-message deflate (the websockets client offers it by default).  Frames are a few hundred
# bytes of JSON, and a compressed socket holds a zlib compressor and decompressor on both ends:
# measured with bench/fanin.py at 5,000 agents, 58 KiB of server memory per connection instead of
# 25, and 18 % fewer status frames stored per second.
COMPRESSION = None


class State(enum.Enum):
    CONNECTING = "CONNECTING"
    HANDSHAKING = "HANDSHAKING"
    READY = "READY"
    DISCONNECTED = "DISCONNECTED"


class AuthRejected(Exception):
    """The server does not accept our credential."""


class Backoff:
    """Capped exponential backoff with full jitter; a separate, long delay after auth failures."""

    def __init__(self, initial: float = 1.0, cap: float = 60.0, auth_min: float = 60.0, auth_max: float = 300.0,
                 rng: random.Random | None = None):
        self.initial, self.cap = initial, cap
        self.auth_min, self.auth_max = auth_min, auth_max
        self.attempt = 0
        self.rng = rng or random.Random()

    def reset(self) -> None:
        self.attempt = 0

    def next_delay(self) -> float:
        base = min(self.cap, self.initial * (2 ** self.attempt))
        self.attempt += 1
        # "equal jitter": at least half the base, so delays still grow.
        return base / 2 + self.rng.uniform(0, base / 2)

    def rate_limited(self) -> None:
        """The server closed us for flooding (4429): the next delays start near the cap."""
        self.attempt = max(self.attempt, RATE_LIMITED_ATTEMPT)

    def auth_delay(self) -> float:
        self.attempt += 1
        return self.rng.uniform(self.auth_min, self.auth_max)


def close_code(exc: BaseException) -> int | None:
    rcvd = getattr(exc, "rcvd", None)
    return rcvd.code if rcvd is not None else None


RATE_LIMITED_ATTEMPT = 6        # 2**6 s > the default 60 s cap: back off fully after a 4429


def is_rate_limited_close(exc: BaseException) -> bool:
    return isinstance(exc, ConnectionClosed) and close_code(exc) == CLOSE_RATE_LIMITED


def is_auth_close(exc: BaseException) -> bool:
    if isinstance(exc, InvalidStatus):
        return exc.response.status_code in (401, 403)
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        # 4403: revoked / deleted / re-enrolled; 4409: another copy of this host took over.  Neither
        # gets better by retrying fast.
        return rcvd is not None and rcvd.code in (CLOSE_UNAUTHORIZED, CLOSE_REVOKED, CLOSE_REPLACED)
    return False


class Connection:
    """One websocket to the server with its state; ``open()`` may be called again after a drop."""

    def __init__(self, url: str, credential: str):
        self.url = url
        self._credential = credential
        self.state = State.DISCONNECTED
        self.ws: ClientConnection | None = None

    def transition(self, new: State, reason: str = "") -> None:
        if new is self.state:
            return
        log.info("connection %s -> %s%s", self.state.value, new.value, f" ({reason})" if reason else "")
        self.state = new

    async def open(self) -> None:
        """CONNECTING, then HANDSHAKING once the websocket is up. Raises AuthRejected or OSError-ish errors."""
        self.transition(State.CONNECTING, self.url)
        try:
            self.ws = await connect(
                self.url, additional_headers={"Authorization": f"Bearer {self._credential}"},
                open_timeout=OPEN_TIMEOUT, ping_interval=20, ping_timeout=20, close_timeout=5,
                user_agent_header="fleet-agent", compression=COMPRESSION,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            self.transition(State.DISCONNECTED, f"handshake rejected with HTTP {status}")
            if status in (401, 403):
                raise AuthRejected(f"the server rejected the credential (HTTP {status})") from None
            raise
        except BaseException as exc:
            self.transition(State.DISCONNECTED, f"{type(exc).__name__}: {exc}")
            raise
        self.transition(State.HANDSHAKING, "websocket open, sending hello")

    async def send(self, frame: str) -> None:
        assert self.ws is not None
        await self.ws.send(frame)

    async def recv(self) -> str | bytes:
        assert self.ws is not None
        return await self.ws.recv()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.ws is not None:
            try:
                await self.ws.close(code, reason)
            except Exception:  # closing a dead socket: nothing left to do
                pass
            self.ws = None
        self.transition(State.DISCONNECTED, reason or f"closed with {code}")
