from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from fleetweb.core.health import healthz

api_patterns = [
    path("", include("fleetweb.fleet.api.urls")),
    path("", include("fleetweb.updates.api.urls")),
    path("", include("fleetweb.tenancy.api.urls")),
    path("", include("fleetweb.reboots.api.urls")),
    path("", include("fleetweb.builds.api.urls")),
    path("", include("fleetweb.cloudconfig.api.urls")),
]

handler404 = "fleetweb.core.api.not_found"

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("api/v1/", include((api_patterns, "api"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("admin/", admin.site.urls),
    path("", include("fleetweb.core.urls")),
    path("", include("fleetweb.fleet.urls")),
    path("", include("fleetweb.updates.urls")),
    path("", include("fleetweb.reboots.urls")),
    path("", include("fleetweb.builds.urls")),
    path("", include("fleetweb.cloudconfig.urls")),
]
