from channels.auth import AuthMiddlewareStack
from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from .consumers import UiConsumer

websocket_urlpatterns = [
    path("ws/ui/", AllowedHostsOriginValidator(AuthMiddlewareStack(UiConsumer.as_asgi()))),
]
