from django.db import models


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    OPERATOR = "operator", "Operator"
    ADMIN = "admin", "Admin"

    @classmethod
    def rank(cls, role: str) -> int:
        return {cls.VIEWER: 0, cls.OPERATOR: 1, cls.ADMIN: 2}.get(role, -1)

    @classmethod
    def at_least(cls, role: str, needed: str) -> bool:
        return cls.rank(role) >= cls.rank(needed)
