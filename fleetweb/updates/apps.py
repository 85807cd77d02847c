from django.apps import AppConfig


class UpdatesConfig(AppConfig):
    name = "fleetweb.updates"
    label = "updates"
