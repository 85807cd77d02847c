from django.apps import AppConfig


class CloudconfigConfig(AppConfig):
    name = "fleetweb.cloudconfig"
    label = "cloudconfig"
