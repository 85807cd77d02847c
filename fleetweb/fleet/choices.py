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
    REBOOTING = "rebooting", "Rebooting"
    REBOOT_PATH = "reboot_path", "Reboot path chosen"
    REBOOT_WAITING = "reboot_waiting", "Reboot waiting"
    HEALTH_CHECK_FAILED = "health_check_failed", "Health check failed"
    ALREADY_CURRENT = "already_current", "Already on that version"
    SIGNING_KEY_PINNED = "signing_key_pinned", "Signing key pinned"
    SIGNING_KEY_ROTATED = "signing_key_rotated", "Signing key rotation followed"
    COMMAND_UNSUPPORTED = "command_unsupported", "Command not supported"
    # reboot coordination (the agent's view and the server's)
    LOCK_ACQUIRED = "lock_acquired", "Reboot lock acquired"
    LOCK_WAITING = "lock_waiting", "Waiting for the reboot lock"
    LOCK_TAKEN = "lock_taken", "Reboot lock taken"
    LOCK_RELEASED = "lock_released", "Reboot lock released"
    LOCK_UNLOCKED = "lock_unlocked", "Reboot lock released by an admin"
    LOCK_SET_MAX = "lock_set_max", "Reboot lock max changed"
    LOCK_STUCK = "lock_stuck", "Host stuck holding the reboot lock"
    FLEETLOCK_ROTATED = "fleetlock_rotated", "FleetLock URL rotated"
    ETCD_PROVISIONED = "etcd_provisioned", "etcd account provisioned"
    # host configuration
    CLOUD_CONFIG_APPLIED = "cloud_config_applied", "Cloud-config applied"
    # security: secrets, credentials and enrollment
    CREDENTIAL_REVOKED = "credential_revoked", "Agent credential revoked"
    REENROLLMENT_ALLOWED = "reenrollment_allowed", "Re-enrollment allowed"
    REENROLLMENT_REFUSED = "reenrollment_refused", "Re-enrollment refused"
    OMAHA_URL_ROTATED = "omaha_url_rotated", "Omaha URL rotated"
    OMAHA_URL_REVOKED = "omaha_url_revoked", "Omaha URL revoked"
    OMAHA_APP_ADDED = "omaha_app_added", "Omaha application id added"
    OMAHA_APP_REMOVED = "omaha_app_removed", "Omaha application id removed"
    FLEETLOCK_REVOKED = "fleetlock_revoked", "FleetLock URL revoked"
    CLOUD_CONFIG_URL_ROTATED = "cloud_config_url_rotated", "Cloud-config URL rotated"
    CLOUD_CONFIG_URL_REVOKED = "cloud_config_url_revoked", "Cloud-config URL revoked"
    ETCD_ROTATED = "etcd_rotated", "etcd credentials rotated"
    ETCD_ACCESS_REVOKED = "etcd_access_revoked", "etcd access revoked"

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
            cls.REBOOTING: "orange", cls.HEALTH_CHECK_FAILED: "red", cls.LOCK_ACQUIRED: "orange",
            cls.LOCK_TAKEN: "orange", cls.LOCK_WAITING: "grey", cls.LOCK_RELEASED: "green",
            cls.LOCK_UNLOCKED: "purple", cls.LOCK_SET_MAX: "purple", cls.LOCK_STUCK: "red",
            cls.FLEETLOCK_ROTATED: "blue", cls.ETCD_PROVISIONED: "blue", cls.CLOUD_CONFIG_APPLIED: "green",
            cls.SIGNING_KEY_ROTATED: "purple", cls.KEY_ROTATED: "purple",
            cls.CREDENTIAL_REVOKED: "red", cls.REENROLLMENT_ALLOWED: "orange", cls.REENROLLMENT_REFUSED: "red",
            cls.OMAHA_URL_ROTATED: "blue", cls.OMAHA_URL_REVOKED: "orange", cls.FLEETLOCK_REVOKED: "orange",
            cls.OMAHA_APP_ADDED: "blue", cls.OMAHA_APP_REMOVED: "orange",
            cls.CLOUD_CONFIG_URL_ROTATED: "blue", cls.CLOUD_CONFIG_URL_REVOKED: "orange",
            cls.ETCD_ROTATED: "blue", cls.ETCD_ACCESS_REVOKED: "red",
        }.get(kind, "grey")
