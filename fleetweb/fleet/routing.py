from .api.views import register_endpoint
from .consumers import AgentConsumer

# Hot agent-facing HTTP endpoints served by bare ASGI apps ahead of Django (method, path).
http_routes = {
    ("POST", "/api/v1/agents/register"): register_endpoint,
}

# Websockets served ahead of channels' router by exact path (scope path -> a PlainWebsocket class):
# every agent socket lives for months, and each router level stays on its stack (about 1 KiB each).
websocket_routes = {
    "/ws/agent/": AgentConsumer,
}
