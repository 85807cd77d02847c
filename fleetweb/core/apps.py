from django.apps import AppConfig
from django.db import models

from .lookups import AnyOf


class CoreConfig(AppConfig):
    name = "fleetweb.core"
    label = "core"

    def ready(self):
        models.UUIDField.register_lookup(AnyOf)
