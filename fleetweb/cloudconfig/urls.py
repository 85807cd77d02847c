from django.urls import include, path

urlpatterns = []
urlpatterns += [path("", include("fleetweb.cloudconfig.discovery_urls"))]
urlpatterns += [path("", include("fleetweb.cloudconfig.etcd_urls"))]
