"""ASGI entry point: Django views over HTTP; each app's websocket routes concatenated."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetweb.settings")

import contextlib  # noqa: E402

import django.core.handlers.asgi as django_asgi  # noqa: E402


class _SharedSyncThread(contextlib.AbstractAsyncContextManager):
    """Django wraps each request in asgiref's ThreadSensitiveContext, which gives every request a
    new thread for its sync code (middleware, DRF views) and so a new database connection:
    CONN_MAX_AGE never applies under ASGI (Django ticket #33497) and a trivial view cost ~4 ms.
    Without it, sync code runs on asgiref's one shared sync thread, where the connection persists
    (as it does for the websocket consumers' database_sync_to_async).  Long work does not belong in
    request threads here anyway: it goes to Celery, and views that wait bypass the middleware chain
    (WaitingViewHandler below)."""

    async def __aexit__(self, *exc):
        return None


django_asgi.ThreadSensitiveContext = _SharedSyncThread

import django  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402

django.setup(set_prefix=False)

from fleetweb.cloudconfig import discovery  # noqa: E402


class FleetASGIHandler(django_asgi.ASGIHandler):
    """Django over ASGI with the middleware chain run as one sync call.

    The views behind the chain are sync (Django pages, DRF), so the whole chain and the view run in
    one hop to the shared sync thread. Django's async chain would hop there for every middleware
    method instead (about fifteen per request: host list p50 18.5 ms against 14.5 ms, measured).
    Views that wait (long polls) must not enter this chain: they would hold the one sync thread,
    and with it every other request and every consumer's database call, for their whole wait.
    They are served by WaitingViewHandler below."""

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)
        self._middleware_chain = self.adapt_method_mode(True, self._middleware_chain, False)


class WaitingViewHandler(django_asgi.ASGIHandler):
    """URL routing and async views without middleware, for routes that need none of it (anonymous,
    CSRF-exempt, never cached) and may wait: the discovery service's watch (up to 50 s)."""

    def load_middleware(self, is_async=False):
        self._view_middleware, self._template_response_middleware, self._exception_middleware = [], [], []
        self._middleware_chain = convert_exception_to_response(self._get_response_async)


django_asgi_app = FleetASGIHandler()
waiting_view_app = WaitingViewHandler()
WAITING_VIEW_PATHS = discovery.KEYS_PATH

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from fleetweb.core import live, redact  # noqa: E402
from fleetweb.core.bodylimit import BodyLimit  # noqa: E402
from fleetweb.core.routing import websocket_urlpatterns as ui_routes  # noqa: E402
from fleetweb.fleet.routing import http_routes  # noqa: E402
from fleetweb.fleet.routing import websocket_urlpatterns as agent_routes  # noqa: E402


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
    "websocket": URLRouter(agent_routes + ui_routes),
})


async def application(scope, receive, send):
    # Dashboard notices from this process's worker threads are batched on its event loop.
    if live.needs_loop():
        live.bind_loop()
    return await router(scope, receive, send)
