from django.urls import path

from .api.views import register_endpoint
from .consumers import AgentConsumer

# Hot agent-facing HTTP endpoints served by bare ASGI apps ahead of Django (method, path).
http_routes = {
    ("POST", "/api/v1/agents/register"): register_endpoint,
}

websocket_urlpatterns = [
    path("ws/agent/", AgentConsumer.as_asgi()),
]
