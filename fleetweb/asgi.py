"""ASGI entry point: Django views over HTTP; each app's websocket routes concatenated."""
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetweb.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from fleetweb.core import live  # noqa: E402
from fleetweb.core.routing import websocket_urlpatterns as ui_routes  # noqa: E402
from fleetweb.fleet.routing import websocket_urlpatterns as agent_routes  # noqa: E402

# Agents authenticate with a bearer credential and send no Origin header; the dashboard socket
# is wrapped with sessions and origin validation in its own routing module.
router = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": URLRouter(agent_routes + ui_routes),
})


async def application(scope, receive, send):
    # Dashboard notices from this process's worker threads are batched on its event loop.
    if live.needs_loop():
        live.bind_loop()
    return await router(scope, receive, send)
