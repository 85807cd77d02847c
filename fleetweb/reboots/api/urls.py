from django.urls import path

from fleetweb.tenancy.api.base import Router

from . import views

router = Router()
router.register("locks", views.LockViewSet, basename="lock")

urlpatterns = [
    path("fleetlock-url", views.FleetLockUrlView.as_view(), name="fleetlock-url"),
    *router.urls,
]
