from django.urls import include, path

urlpatterns = []
urlpatterns += [path("", include("fleetweb.cloudconfig.etcd_api_urls"))]
