"""Where a web process runs its sync code (the concurrency model; README "Concurrency").

A web process is one event loop (uvicorn) plus a few threads, each with its own persistent
database connection (Django's connections are per thread, so a thread that lives keeps its
connection and CONN_MAX_AGE applies):

* the **agent lane**: asgiref's one shared sync thread.  Agent sockets (hello, status, acks,
  events, through the batching writers of ``fleetweb.fleet.writer``), agent registration and the
  dashboard socket's session lookup run there: short, batched calls and nothing else.
* the **request lanes**: ``FLEET_WEB_THREADS`` threads for Django's middleware chain and the views
  behind it (pages, the REST API, uploads, the locks page's etcd calls).  A request borrows a free
  lane for its one sync call and gives it back before its response is streamed; when every lane is
  busy, requests queue on the event loop while agents go on.  A lane is a single-thread executor
  handed to asgiref's ``ThreadSensitiveContext``, so everything thread-sensitive the view does
  (``async_to_sync`` into an async view and back) stays on that lane's thread and connection.
* the **watch lane**: one thread for the short database calls of views that wait (discovery
  watches), which hold no lane while they wait.
* password hashing is bounded further (``fleetweb.core.hashers``): at most
  ``FLEET_PASSWORD_HASH_CONCURRENCY`` hashes at once, so a burst of logins cannot take every core.
  A sign-in waits for its hash slot on the event loop (``LoginGate``) before it takes a request
  lane, so logins waiting to hash never hold the lanes pages and the API need; at most
  ``FLEET_LOGIN_QUEUE`` wait, and more are refused at once (429).

Before this, every view ran on the agent lane (one shared thread, for the persistent connection):
one slow request stalled every agent of the process.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from django.http import HttpResponse, JsonResponse

log = logging.getLogger(__name__)

# Requests that may run twice: a read whose database connection died under it is answered by a
# second run on a fresh connection instead of a 500.
RETRY_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class Lanes:
    """``size`` single-thread executors; ``run(fn, *args)`` runs ``fn`` on a free one."""

    def __init__(self, size: int, name: str):
        if size < 1:
            raise ValueError(f"{name}: at least one lane is needed, not {size}")
        self.size = size
        self.executors = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-{i}") for i in range(size)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._free: asyncio.Queue | None = None

    def _queue(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use in this process (or a new loop in tests)
            self._loop, self._free = loop, asyncio.Queue()
            for executor in self.executors:
                self._free.put_nowait(executor)
        return self._free

    @property
    def busy(self) -> int:
        return self.size - (self._free.qsize() if self._free is not None else self.size)

    @contextlib.asynccontextmanager
    async def lane(self):
        """Hold one lane: thread-sensitive calls inside the block run on its thread."""
        free = self._queue()
        executor = await free.get()
        try:
            async with ThreadSensitiveContext(executor=executor):
                yield executor
        finally:
            free.put_nowait(executor)

    async def run(self, fn, *args):
        """``fn(*args)`` on a free lane, between two ``close_old_connections`` of that lane's own
        connection (Django's request signals would run them on whichever thread sends them)."""
        async with self.lane():
            return await sync_to_async(_with_fresh_connection)(fn, *args)


def _with_fresh_connection(fn, *args):
    close_old_connections()  # an obsolete or broken connection (a restarted database) is replaced
    try:
        return fn(*args)
    finally:
        close_old_connections()


def _connection_lost() -> bool:
    """Did this thread's database connection fail under the request (terminated by the server,
    a restart, a network cut), as opposed to a query that failed on a working connection?"""
    if not connection.errors_occurred:
        return False
    raw = connection.connection
    if raw is None:
        return True
    try:  # Django's own is_usable() says yes to any SQLite connection, even a closed one
        raw.cursor().execute("SELECT 1")
    except Exception:
        return True
    return False


def answer_despite_a_lost_connection(chain, request):
    """Run the middleware chain; when the database connection died under it (the database cut
    connections, restarted or failed over), a read runs again on a fresh connection and a write
    is answered 503 with Retry-After (it may or may not have been saved), never a bare 500."""
    response = chain(request)
    if response.status_code < 500 or not _connection_lost():
        return response
    connection.close()
    if request.method in RETRY_METHODS:
        log.warning("%s %s: the database connection was lost; answering from a fresh one", request.method,
                    request.path)
        response.close()
        response = chain(request)
        if response.status_code < 500 or not _connection_lost():
            return response
        connection.close()
    response.close()
    detail = "the database connection was lost; retry the request (a change may not have been saved)"
    if request.path.startswith("/api/"):
        answer = JsonResponse({"code": "database_unavailable", "detail": detail}, status=503)
    else:
        answer = HttpResponse(detail + "\n", status=503, content_type="text/plain")
    answer["Retry-After"] = "1"
    return answer


class LoginGate:
    """Sign-ins (they hash a password) wait here for a hash slot, holding no lane: at 20 logins a
    second they used to take all 8 lanes while they waited for the one slot, and the host list's
    p99 went from 1 s to 27 s.  ``FLEET_LOGIN_QUEUE`` may wait; ``enter()`` refuses the next one
    (it yields False) instead of queueing it, so a login flood costs a refusal each."""

    def __init__(self):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._slots: asyncio.Semaphore | None = None
        self.waiting = 0

    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use in this process (or a new loop in tests)
            self._loop, self.waiting = loop, 0
            self._slots = asyncio.Semaphore(max(1, settings.FLEET_PASSWORD_HASH_CONCURRENCY))
        return self._slots

    @contextlib.asynccontextmanager
    async def enter(self):
        """Yields True once this sign-in holds a hash slot, or False (at once) when the queue is full."""
        slots = self._semaphore()
        if slots.locked() and self.waiting >= settings.FLEET_LOGIN_QUEUE:
            yield False
            return
        self.waiting += 1
        try:
            await slots.acquire()
        finally:
            self.waiting -= 1
        try:
            yield True
        finally:
            slots.release()


def login_refused() -> HttpResponse:
    answer = HttpResponse("Too many sign-in attempts are waiting to be checked; try again in a few seconds.\n",
                          status=429, content_type="text/plain")
    answer["Retry-After"] = "5"
    return answer


class SharedLane:
    """One thread shared by many concurrent blocks (the watch lane): each block gets its own
    ``ThreadSensitiveContext`` over the same single-thread executor."""

    def __init__(self, name: str):
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def context(self) -> ThreadSensitiveContext:
        return ThreadSensitiveContext(executor=self.executor)
