from django.db import models

from agent.cloudconfig import ERROR, INFO, WARNING


class Level(models.TextChoices):
    """Where a document sits; the effective document merges them in this order."""
    ORGANIZATION = "organization", "Organization"
    GROUP = "group", "Group"
    HOST = "host", "Host"

    @classmethod
    def colour(cls, level: str) -> str:
        return {cls.ORGANIZATION: "purple", cls.GROUP: "blue", cls.HOST: "green"}.get(level, "grey")


class EntryKind(models.TextChoices):
    """Kinds of validation entries (coreos-cloudinit --validate)."""
    ERROR = ERROR, "Error"
    WARNING = WARNING, "Warning"
    INFO = INFO, "Info"

    @classmethod
    def colour(cls, kind: str) -> str:
        return {cls.ERROR: "red", cls.WARNING: "orange", cls.INFO: "blue"}.get(kind, "grey")


class ApplyState(models.TextChoices):
    """A host against its effective document."""
    CURRENT = "current", "Current"
    BEHIND = "behind", "Behind"
    FAILED = "failed", "Applied with errors"
    NONE = "none", "No document"

    @classmethod
    def colour(cls, state: str) -> str:
        return {cls.CURRENT: "green", cls.BEHIND: "orange", cls.FAILED: "red"}.get(state, "grey")
