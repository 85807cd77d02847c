from fleetweb.tenancy.api.base import Router

from . import views

router = Router()
router.register("channels", views.ChannelViewSet, basename="channel")

urlpatterns = router.urls
