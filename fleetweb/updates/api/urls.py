from django.urls import path

from fleetweb.tenancy.api.base import Router

from . import views

router = Router()
router.register("releases", views.ReleaseViewSet, basename="release")
router.register("channels", views.ChannelViewSet, basename="channel")
router.register("rollouts", views.RolloutViewSet, basename="rollout")
router.register("omaha-apps", views.OmahaApplicationViewSet, basename="omaha-app")

urlpatterns = [
    path("rollouts/<int:id>/hosts", views.RolloutHostListView.as_view(), name="rollout-hosts"),
    path("groups/<int:id>/omaha-url", views.GroupOmahaUrlView.as_view(), name="group-omaha-url"),
    path("signing-key/", views.SigningKeyView.as_view(), name="signing-key"),
    path("signing-key/rotate", views.SigningKeyRotateView.as_view(), name="signing-key-rotate"),
    *router.urls,
]
