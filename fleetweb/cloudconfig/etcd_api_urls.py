from django.urls import path

from . import etcd_api

urlpatterns = [
    path("cluster-config/", etcd_api.ClusterConfigListView.as_view(), name="cluster-config-list"),
    path("cluster-config/key", etcd_api.ClusterConfigKeyView.as_view(), name="cluster-config-key"),
    path("cluster-config/history", etcd_api.ClusterConfigHistoryView.as_view(), name="cluster-config-history"),
]
