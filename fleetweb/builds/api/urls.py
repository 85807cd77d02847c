from fleetweb.tenancy.api.base import Router

from . import views

router = Router()
router.register("builds", views.ImageBuildViewSet, basename="build")

urlpatterns = router.urls
