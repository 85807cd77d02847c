from django.urls import path

from . import views

urlpatterns = [
    path("builds/", views.build_list, name="build-list"),
    path("builds/<int:pk>/", views.build_detail, name="build-detail"),
    path("builds/<int:pk>/cancel", views.build_cancel, name="build-cancel"),
    path("builds/<int:pk>/publish", views.build_publish, name="build-publish"),
    path("builds/<int:pk>/log", views.build_log, name="build-log"),
    path("builds/<int:pk>/artifacts/<str:name>", views.artifact_download, name="build-artifact"),
]
