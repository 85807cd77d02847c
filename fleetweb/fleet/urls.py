from django.urls import path

from . import views

urlpatterns = [
    path("hosts/", views.host_list, name="host-list"),
    path("hosts/<uuid:pk>/", views.host_detail, name="host-detail"),
    path("groups/", views.group_list, name="group-list"),
    path("groups/<int:pk>/", views.group_detail, name="group-detail"),
    path("groups/<int:pk>/channel", views.group_channel, name="group-channel"),
    path("groups/<int:pk>/settings", views.group_settings, name="group-settings"),
    path("tokens/", views.token_list, name="token-list"),
    path("tokens/<int:pk>/revoke", views.token_revoke, name="token-revoke"),
]
