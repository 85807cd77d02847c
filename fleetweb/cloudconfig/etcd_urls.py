from django.urls import path

from . import etcd_views

urlpatterns = [
    path("cluster-config/", etcd_views.cluster_config, name="cluster-config"),
    path("cluster-config/save", etcd_views.cluster_config_save, name="cluster-config-save"),
    path("cluster-config/delete", etcd_views.cluster_config_delete, name="cluster-config-delete"),
]
