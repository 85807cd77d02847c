from django.db import models

from agent.protocol import UPDATE_STATUSES


class RebootStrategy(models.TextChoices):
    REBOOT = "reboot", "Reboot at once"
    ETCD_LOCK = "etcd-lock", "Take the etcd lock first"
    BEST_EFFORT = "best-effort", "etcd-lock when etcd runs, else reboot"
    OFF = "off", "Never reboot by itself"


UpdateStatus = models.TextChoices("UpdateStatus", [(s, s) for s in UPDATE_STATUSES])

UPDATE_STATUS_COLOURS = {
    "IDLE": "grey", "CHECKING_FOR_UPDATE": "blue", "UPDATE_AVAILABLE": "blue", "DOWNLOADING": "blue",
    "VERIFYING": "blue", "FINALIZING": "blue", "UPDATED_NEED_REBOOT": "orange", "REPORTING_ERROR_EVENT": "red",
}


class EventKind(models.TextChoices):
    REGISTERED = "registered", "Registered"
    CONNECTED = "connected", "Connected"
    DISCONNECTED = "disconnected", "Disconnected"
    WENT_OFFLINE = "went_offline", "Went offline (no heartbeat)"
    CHANNEL_CHANGED = "channel_changed", "Channel changed"
    STRATEGY_CHANGED = "strategy_changed", "Reboot strategy changed"
    GROUP_CHANGED = "group_changed", "Group settings changed"
    POLICY_APPLIED = "policy_applied", "Policy applied"
    TOKEN_CREATED = "token_created", "Enrollment token created"
    TOKEN_REVOKED = "token_revoked", "Enrollment token revoked"
    HOST_DELETED = "host_deleted", "Host deleted"
    AGENT_EVENT = "agent_event", "Agent event"
    KEY_ROTATED = "key_rotated", "Signing key rotated"
    RELEASE_CREATED = "release_created", "Release created"
    RELEASE_PUBLISH = "release_publish", "Release published"
    RELEASE_PROMOTE = "release_promote", "Release promoted"
    RELEASE_ROLLBACK = "release_rollback", "Channel rolled back"
    ROLLOUT_STARTED = "rollout_started", "Rollout started"
    ROLLOUT_PAUSED = "rollout_paused", "Rollout paused"
    ROLLOUT_RUNNING = "rollout_running", "Rollout resumed"
    ROLLOUT_ABORTED = "rollout_aborted", "Rollout aborted"
    ROLLOUT_HALTED = "rollout_halted", "Rollout halted"
    ROLLOUT_COMPLETED = "rollout_completed", "Rollout completed"
    UPDATE_GRANTED = "update_granted", "Update granted"
    UPDATE_PROGRESS = "update_progress", "Update state"
    UPDATE_INSTALLED = "update_installed", "Update installed"
    UPDATE_SUCCEEDED = "booted_new_version", "Booted the new version"
    UPDATE_FAILED = "update_error", "Update failed"
    ROLLED_BACK = "rollback", "Rolled back"
    REBOOT_NEEDED = "reboot_needed", "Reboot needed"

    @classmethod
    def colour(cls, kind: str) -> str:
        return {
            cls.REGISTERED: "blue", cls.CONNECTED: "green", cls.DISCONNECTED: "grey", cls.WENT_OFFLINE: "red",
            cls.CHANNEL_CHANGED: "purple", cls.STRATEGY_CHANGED: "purple", cls.POLICY_APPLIED: "green",
            cls.TOKEN_CREATED: "blue", cls.TOKEN_REVOKED: "orange", cls.HOST_DELETED: "red",
            cls.RELEASE_PUBLISH: "purple", cls.RELEASE_PROMOTE: "purple", cls.RELEASE_ROLLBACK: "orange",
            cls.ROLLOUT_STARTED: "blue", cls.ROLLOUT_HALTED: "red", cls.ROLLOUT_ABORTED: "grey",
            cls.ROLLOUT_COMPLETED: "green", cls.UPDATE_SUCCEEDED: "green", cls.UPDATE_FAILED: "red",
            cls.ROLLED_BACK: "red", cls.UPDATE_INSTALLED: "blue", cls.REBOOT_NEEDED: "orange",
        }.get(kind, "grey")
