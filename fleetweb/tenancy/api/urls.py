from . import schema  # noqa: F401  (registers the API-key scheme with drf-spectacular)

urlpatterns = []
