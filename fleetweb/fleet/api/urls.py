from django.urls import path

from fleetweb.tenancy.api.base import Router

from . import views

router = Router()
router.register("hosts", views.HostViewSet, basename="host")
router.register("groups", views.GroupViewSet, basename="group")
router.register("tokens", views.EnrollmentTokenViewSet, basename="token")
router.register("events", views.EventViewSet, basename="event")

urlpatterns = [
    path("agents/register", views.RegisterView.as_view(), name="agent-register"),
    *router.urls,
]
