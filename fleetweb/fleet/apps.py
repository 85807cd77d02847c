from django.apps import AppConfig


class FleetConfig(AppConfig):
    name = "fleetweb.fleet"
    label = "fleet"
