"""ASGI entry point: Django views over HTTP; each app's websocket routes concatenated."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetweb.settings")

import contextlib  # noqa: E402

import django.core.handlers.asgi as django_asgi  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402


class _SharedSyncThread(contextlib.AbstractAsyncContextManager):
    """Django wraps each request in asgiref's ThreadSensitiveContext, which gives every request a
    new thread for its sync code (middleware, DRF views) and so a new database connection:
    CONN_MAX_AGE never applies under ASGI (Django ticket #33497) and a trivial view cost ~4 ms.
    Without it, sync code runs on asgiref's one shared sync thread, where the connection persists
    (as it does for the websocket consumers' database_sync_to_async).  Long work does not belong in
    request threads here anyway: it goes to Celery, and streaming/long-poll views are async."""

    async def __aexit__(self, *exc):
        return None


django_asgi.ThreadSensitiveContext = _SharedSyncThread
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from fleetweb.core import live  # noqa: E402
from fleetweb.core.routing import websocket_urlpatterns as ui_routes  # noqa: E402
from fleetweb.fleet.routing import http_routes  # noqa: E402
from fleetweb.fleet.routing import websocket_urlpatterns as agent_routes  # noqa: E402


async def http(scope, receive, send):
    app = http_routes.get((scope["method"], scope["path"]), django_asgi_app)
    return await app(scope, receive, send)


# Agents authenticate with a bearer credential and send no Origin header; the dashboard socket
# is wrapped with sessions and origin validation in its own routing module.
router = ProtocolTypeRouter({
    "http": http,
    "websocket": URLRouter(agent_routes + ui_routes),
})


async def application(scope, receive, send):
    # Dashboard notices from this process's worker threads are batched on its event loop.
    if live.needs_loop():
        live.bind_loop()
    return await router(scope, receive, send)
