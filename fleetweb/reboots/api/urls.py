from fleetweb.tenancy.api.base import Router

from . import views

router = Router()
router.register("locks", views.LockViewSet, basename="lock")

urlpatterns = router.urls
