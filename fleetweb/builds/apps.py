from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "fleetweb.builds"
    label = "builds"
