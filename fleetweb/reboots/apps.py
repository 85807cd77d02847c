from django.apps import AppConfig


class RebootsConfig(AppConfig):
    name = "fleetweb.reboots"
    label = "reboots"
