from django.db import models


class ChannelName(models.TextChoices):
    """Promotion order: every alpha is a beta candidate, every beta a stable candidate."""
    ALPHA = "alpha", "Alpha"
    BETA = "beta", "Beta"
    STABLE = "stable", "Stable"

    @classmethod
    def colour(cls, name: str) -> str:
        return {cls.ALPHA: "purple", cls.BETA: "orange", cls.STABLE: "green"}.get(name, "grey")

    @classmethod
    def position(cls, name: str) -> int:
        return [c.value for c in cls].index(name)
