from django.urls import path

from . import payloads

urlpatterns = [
    path("payloads/<int:release_id>/<uuid:host_id>/<int:expires>/<str:sig>", payloads.download,
         name="payload-download"),
]
