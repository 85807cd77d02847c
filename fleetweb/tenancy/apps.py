from django.apps import AppConfig


class TenancyConfig(AppConfig):
    name = "fleetweb.tenancy"
    label = "tenancy"
