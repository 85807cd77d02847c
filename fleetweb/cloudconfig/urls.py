from django.urls import include, path

from . import views
from .choices import Level

ORG, GROUP, HOST = Level.ORGANIZATION, Level.GROUP, Level.HOST


def _level(prefix: str, name: str, level: str) -> list:
    return [
        path(prefix, views.editor, {"level": level}, name=name),
        path(f"{prefix}diff", views.diff, {"level": level}, name=f"{name}-diff"),
        path(f"{prefix}revisions/<int:number>/restore", views.restore, {"level": level}, name=f"{name}-restore"),
        path(f"{prefix}url", views.fetch_url, {"level": level}, name=f"{name}-url"),
    ]


urlpatterns = [
    path("cloud-config/", views.index, name="cloudconfig-index"),
    path("cloud-config/validate", views.validate, name="cloudconfig-validate"),
    path("cloud-config/groups/<int:pk>/hosts", views.group_hosts, name="cloudconfig-group-hosts"),
    *_level("cloud-config/organization/", "cloudconfig-org", ORG),
    *_level("cloud-config/groups/<int:pk>/", "cloudconfig-group", GROUP),
    *_level("cloud-config/hosts/<uuid:pk>/", "cloudconfig-host", HOST),
    # cloud-config-url= for hosts without the agent (the secret is the authentication)
    path("cloud-config/<str:secret>", views.serve, name="cloudconfig-serve"),
]
urlpatterns += [path("", include("fleetweb.cloudconfig.discovery_urls"))]
urlpatterns += [path("", include("fleetweb.cloudconfig.etcd_urls"))]
