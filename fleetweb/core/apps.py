from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "fleetweb.core"
    label = "core"
