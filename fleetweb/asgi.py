"""ASGI entry point: Django views over HTTP; each app's websocket routes concatenated."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetweb.settings")

import asyncio  # noqa: E402
import gc  # noqa: E402
import tempfile  # noqa: E402

import django  # noqa: E402
import django.core.handlers.asgi as django_asgi  # noqa: E402
from asgiref.sync import sync_to_async  # noqa: E402
from django.core import signals  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.db import close_old_connections  # noqa: E402

django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from fleetweb.cloudconfig import discovery  # noqa: E402
from fleetweb.core.lanes import Lanes, LoginGate, SharedLane, answer_despite_a_lost_connection, login_refused  # noqa: E402

# The concurrency model (fleetweb/core/lanes.py): views run on request lanes, waiting views' short
# calls on the watch lane, agents on asgiref's shared thread.
request_lanes = Lanes(settings.FLEET_WEB_THREADS, "fleet-request")
watch_lane = SharedLane("fleet-watch")
login_gate = LoginGate()

# Django closes obsolete connections on the request signals, but sends them from whichever thread
# the event loop hands sync receivers to: here each lane does it for its own connection instead.
signals.request_started.disconnect(close_old_connections)
signals.request_finished.disconnect(close_old_connections)


class FleetASGIHandler(django_asgi.ASGIHandler):
    """Django over ASGI with the middleware chain and the view run as one sync call on a request
    lane (Django's async chain would hop threads for every middleware method: about fifteen per
    request, host list p50 18.5 ms against 14.5 ms, measured).  The body is read and the response
    streamed on the event loop, holding no lane: a slow upload or download holds only its socket.

    Django would wrap each request in a ThreadSensitiveContext of its own, a new thread (and a new
    database connection) per request; the lanes replace it."""

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)
        sync_chain = self._middleware_chain

        async def on_a_lane(request):
            if request.method == "POST" and request.path_info == settings.LOGIN_URL:
                async with login_gate.enter() as admitted:  # a hash slot first, then a lane
                    if not admitted:
                        return login_refused()
                    return await request_lanes.run(answer_despite_a_lost_connection, sync_chain, request)
            return await request_lanes.run(answer_despite_a_lost_connection, sync_chain, request)

        self._middleware_chain = on_a_lane

    async def __call__(self, scope, receive, send):
        await self.handle(scope, receive, send)

    async def read_body(self, receive):
        """The request body into a temporary file, as Django does, but a large body's writes go to
        a thread a megabyte at a time: a 2 GB upload does not write to disk on the event loop."""
        body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        chunks, buffered, total = [], 0, 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            chunk = message.get("body", b"")
            chunks.append(chunk)
            buffered += len(chunk)
            more = message.get("more_body", False)
            if buffered >= BODY_WRITE_SIZE or not more:
                data, chunks, buffered = b"".join(chunks), [], 0
                total += len(data)
                if total > settings.FILE_UPLOAD_MAX_MEMORY_SIZE:
                    await asyncio.to_thread(body_file.write, data)
                else:
                    body_file.write(data)
            if not more:
                break
        body_file.seek(0)
        return body_file


BODY_WRITE_SIZE = 1 << 20


class WaitingViewHandler(django_asgi.ASGIHandler):
    """URL routing and async views without middleware, for routes that need none of it (anonymous,
    CSRF-exempt, never cached) and may wait: the discovery service's watch (up to 50 s).  Their
    short database calls share the watch lane; they hold no thread while they wait."""

    def load_middleware(self, is_async=False):
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)

    async def __call__(self, scope, receive, send):
        async with watch_lane.context():
            await sync_to_async(close_old_connections)()
            await self.handle(scope, receive, send)


django_asgi_app = FleetASGIHandler()
waiting_view_app = WaitingViewHandler()
WAITING_VIEW_PATHS = discovery.KEYS_PATH

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from fleetweb.core import live, redact  # noqa: E402
from fleetweb.core.bodylimit import BodyLimit  # noqa: E402
from fleetweb.core.routing import websocket_urlpatterns as ui_routes  # noqa: E402
from fleetweb.fleet.routing import http_routes, websocket_routes  # noqa: E402


async def http(scope, receive, send):
    app = http_routes.get((scope["method"], scope["path"]))
    if app is None:
        app = waiting_view_app if WAITING_VIEW_PATHS.match(scope["path"]) else django_asgi_app
    return await app(scope, receive, send)


# Agents authenticate with a bearer credential and send no Origin header; the dashboard socket
# is wrapped with sessions and origin validation in its own routing module.
redact.install()  # after the ASGI server configured its loggers

router = ProtocolTypeRouter({
    "http": BodyLimit(http),
    "websocket": URLRouter(ui_routes),
})


# Everything imported so far lives as long as the process: out of the collector's sight, a full
# collection scans only what connections and requests allocate (at 10,000 agents a full collection
# of the whole heap took up to a second, long enough for uvicorn's supervisor to miss a health ping).
gc.freeze()


async def application(scope, receive, send):
    # Dashboard notices from this process's worker threads are batched on its event loop.
    if live.needs_loop():
        live.bind_loop()
    if scope["type"] == "websocket":
        consumer = websocket_routes.get(scope["path"])
        if consumer is not None:  # the agents' socket: no router frames kept for its whole life
            return await consumer()(scope, receive, send)
    return await router(scope, receive, send)
