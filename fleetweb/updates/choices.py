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

    @classmethod
    def before(cls, name: str) -> str | None:
        """The channel a channel promotes from (beta ← alpha, stable ← beta)."""
        names = [c.value for c in cls]
        i = names.index(name)
        return names[i - 1] if i > 0 else None


class ChannelAction(models.TextChoices):
    PUBLISH = "publish", "Published"
    PROMOTE = "promote", "Promoted"
    ROLLBACK = "rollback", "Rolled back"


class RolloutStatus(models.TextChoices):
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    HALTED = "halted", "Halted"
    ABORTED = "aborted", "Aborted"
    SUPERSEDED = "superseded", "Superseded"

    @classmethod
    def colour(cls, status: str) -> str:
        return {cls.RUNNING: "blue", cls.PAUSED: "orange", cls.COMPLETED: "green", cls.HALTED: "red",
                cls.ABORTED: "grey", cls.SUPERSEDED: "grey"}.get(status, "grey")

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.RUNNING, cls.PAUSED)


class HostUpdateState(models.TextChoices):
    """Where one host is in one rollout (the Omaha event codes are the model)."""
    PENDING = "pending", "Waiting"
    GRANTED = "granted", "Granted"
    DOWNLOADING = "downloading", "Downloading"
    VERIFYING = "verifying", "Verifying"
    INSTALLING = "installing", "Installing"
    NEED_REBOOT = "need_reboot", "Installed, reboot needed"
    REBOOTING = "rebooting", "Rebooting"
    SUCCEEDED = "succeeded", "Updated"
    FAILED = "failed", "Failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    SKIPPED = "skipped", "Skipped"

    @classmethod
    def in_flight(cls) -> tuple[str, ...]:
        return (cls.GRANTED, cls.DOWNLOADING, cls.VERIFYING, cls.INSTALLING, cls.NEED_REBOOT, cls.REBOOTING)

    @classmethod
    def failed(cls) -> tuple[str, ...]:
        return (cls.FAILED, cls.ROLLED_BACK)

    @classmethod
    def done(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED, cls.FAILED, cls.ROLLED_BACK, cls.SKIPPED)

    @classmethod
    def colour(cls, state: str) -> str:
        if state in cls.in_flight():
            return "blue"
        return {cls.SUCCEEDED: "green", cls.FAILED: "red", cls.ROLLED_BACK: "red", cls.PENDING: "grey",
                cls.SKIPPED: "grey"}.get(state, "grey")


# Agent update_status → the host's state in its rollout.
AGENT_STATUS_TO_STATE = {
    "DOWNLOADING": HostUpdateState.DOWNLOADING,
    "VERIFYING": HostUpdateState.VERIFYING,
    "FINALIZING": HostUpdateState.INSTALLING,
    "UPDATED_NEED_REBOOT": HostUpdateState.NEED_REBOOT,
}
