"""The etcd discovery service (protocol) and its dashboard page."""
from django.urls import path

from . import discovery, discovery_views

urlpatterns = [
    path("discovery/new", discovery.new, name="discovery-new"),
    path("discovery/tokens/", discovery_views.token_list, name="discovery-list"),
    path("discovery/tokens/<int:pk>/", discovery_views.token_detail, name="discovery-detail"),
    path("discovery/tokens/<int:pk>/members/<str:member_id>/remove", discovery_views.member_remove,
         name="discovery-member-remove"),
    path("discovery/<str:token>", discovery.keys, name="discovery-keys"),
    path("discovery/<str:token>/", discovery.keys),  # etcd's client keeps a URL's trailing slash
    path("discovery/<str:token>/<path:key>", discovery.keys, name="discovery-key"),
]
