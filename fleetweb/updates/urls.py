from django.urls import path

from . import omaha, payloads, views

urlpatterns = [
    path("v1/update/", omaha.update, name="omaha-update"),
    path("v1/update", omaha.update),
    path("v1/update/<str:secret>/", omaha.update, name="omaha-group-update"),
    path("v1/update/<str:secret>", omaha.update),  # update_engine SERVER= values written without the slash
    path("payloads/<int:release_id>/<uuid:host_id>/<int:expires>/<str:sig>", payloads.download,
         name="payload-download"),
    path("releases/", views.release_list, name="release-list"),
    path("releases/<int:pk>/", views.release_detail, name="release-detail"),
    path("channels/", views.channel_list, name="channel-list"),
    path("channels/<str:name>/publish", views.channel_publish, name="channel-publish"),
    path("channels/<str:name>/promote", views.channel_promote, name="channel-promote"),
    path("channels/<str:name>/rollback", views.channel_rollback, name="channel-rollback"),
    path("rollouts/", views.rollout_list, name="rollout-list"),
    path("rollouts/<int:pk>/", views.rollout_detail, name="rollout-detail"),
    path("rollouts/<int:pk>/<str:action>", views.rollout_action, name="rollout-action"),
    path("groups/<int:pk>/omaha-url", views.group_omaha_url, name="group-omaha-url"),
    path("groups/<int:pk>/rollout-policy", views.group_rollout_policy, name="group-rollout-policy"),
]
