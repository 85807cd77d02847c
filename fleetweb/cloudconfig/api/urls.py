from django.urls import include, path

from ..choices import Level
from . import views

PREFIXES = {Level.ORGANIZATION: "organization/", Level.GROUP: "groups/<int:pk>/", Level.HOST: "hosts/<uuid:pk>/"}


def _level_urls(level: str) -> list:
    v = views.level_views(level)
    p = PREFIXES[level] + "cloud-config"
    return [
        path(p, v["document"].as_view(), name=f"{level}-cloud-config"),
        path(f"{p}/revisions", v["revisions"].as_view(), name=f"{level}-cloud-config-revisions"),
        path(f"{p}/revisions/<int:number>", v["revision"].as_view(), name=f"{level}-cloud-config-revision"),
        path(f"{p}/revisions/<int:number>/restore", v["restore"].as_view(), name=f"{level}-cloud-config-restore"),
        path(f"{p}/diff", v["diff"].as_view(), name=f"{level}-cloud-config-diff"),
        path(f"{p}/url", v["url"].as_view(), name=f"{level}-cloud-config-url"),
    ]


urlpatterns = [
    path("cloud-config/validate", views.ValidateView.as_view(), name="cloud-config-validate"),
    path("agents/cloud-config", views.AgentDocumentView.as_view(), name="agent-cloud-config"),
    path("hosts/<uuid:pk>/cloud-config/effective", views.EffectiveView.as_view(), name="host-cloud-config-effective"),
    *_level_urls(Level.ORGANIZATION),
    *_level_urls(Level.GROUP),
    *_level_urls(Level.HOST),
]
urlpatterns += [path("", include("fleetweb.cloudconfig.etcd_api_urls"))]  # cluster config in etcd (issue 6 §5)
