"""The agent <-> server wire protocol: one implementation for both sides.

Frames are JSON text objects with a ``type`` field.  ``decode`` turns raw text
into a validated dict or raises :class:`ProtocolError` carrying the code the
receiver puts into its ``error`` frame.  Nothing here imports Django.
"""
from __future__ import annotations

import json
from typing import Any

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024

# Websocket close codes (4000-4999 are application defined).
CLOSE_UNAUTHORIZED = 4401   # missing / wrong / revoked credential: do not retry fast
CLOSE_REVOKED = 4403        # the credential was revoked, the host deleted or re-enrolled: register again
CLOSE_REPLACED = 4409       # a newer connection with the same credential took over
CLOSE_PROTOCOL = 4400       # too many protocol errors
CLOSE_RATE_LIMITED = 4429   # frames over the connection's budget: back off before reconnecting
CLOSE_TRY_AGAIN_LATER = 1013  # the server is overloaded (a reconnect storm): reconnect after the usual backoff

# Seconds an agent waits for the policy after its hello before it gives up and reconnects; the
# server drops a hello that waited in its queue for nearly that long (nobody is waiting for it).
POLICY_TIMEOUT = 15.0

# Error codes carried in ``error`` frames.
ERR_MALFORMED = "malformed"        # not JSON, not an object, no type
ERR_TOO_LARGE = "too_large"        # frame over MAX_FRAME_BYTES
ERR_UNKNOWN_TYPE = "unknown_type"  # a type this side does not know
ERR_INVALID = "invalid"            # a known type with bad fields
ERR_NOT_READY = "not_ready"        # a frame that needs a hello first
ERR_RATE_LIMITED = "rate_limited"  # over the connection's frame budget: dropped (a warning)
ERR_FORBIDDEN_KIND = "forbidden_kind"  # an event kind only the server records

# The event kinds an agent may report (issue 9 §12); anything else (a forged "rollout_completed",
# "key_rotated", "token_created") is refused and not stored.
AGENT_EVENT_KINDS = frozenset({
    "policy_applied", "cloud_config_applied", "command_unsupported",
    "update_installed", "already_current", "update_error", "booted_new_version", "health_check_failed",
    "download_retrying",
    "rollback", "reboot_needed", "reboot_path", "reboot_waiting", "rebooting",
    "lock_acquired", "lock_waiting", "lock_released", "signing_key_pinned", "signing_key_rotated",
})

UPDATE_STATUSES = (
    "IDLE", "CHECKING_FOR_UPDATE", "UPDATE_AVAILABLE", "DOWNLOADING", "VERIFYING",
    "FINALIZING", "UPDATED_NEED_REBOOT", "REPORTING_ERROR_EVENT",
)
REBOOT_STRATEGIES = ("reboot", "etcd-lock", "best-effort", "off")
COMMANDS = ("check-update", "reboot", "rollback", "unlock")
# Policy fields an agent reports back in its status frames once applied: the server resends the
# policy to an agent whose report differs from what it should have (a push lost with Redis).
REPORTED_POLICY_FIELDS = ("cloud_config_revision", "etcd_credentials_revision")


class ProtocolError(ValueError):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


# A field spec is (python types, required).  ``None`` allowed when NoneType is listed.
_STR = (str,)
_INT = (int,)
_NUM = (int, float)
_BOOL = (bool,)
_LIST = (list,)
_DICT = (dict,)
_OPT_STR = (str, type(None))
_PEM_FIELDS = ("etcd_ca", "etcd_cert", "etcd_key")    # PEM text (a CA bundle may be long)

PARTITION_FIELDS = {
    "label": (_STR, True),
    "number": (_INT, True),
    "version": (_OPT_STR, False),
    "priority": (_INT, True),
    "tries": (_INT, True),
    "successful": (_BOOL, True),
    "active": (_BOOL, True),
}

MESSAGES: dict[str, dict[str, dict[str, tuple[tuple[type, ...], bool]]]] = {
    "agent": {
        "hello": {
            "machine_id": (_STR, True),
            "boot_id": (_STR, True),
            "hostname": (_STR, True),
            "agent_version": (_STR, True),
            "version": (_OPT_STR, True),          # version of the active USR partition
            "partitions": (_LIST, True),
            "update_status": (_STR, True),
            "group": (_OPT_STR, False),           # GROUP= from update.conf (the channel)
            "reboot_strategy": (_OPT_STR, False), # REBOOT_STRATEGY= from update.conf
            "policy_revision": (_INT, False),     # last policy revision applied locally
        },
        "status": {
            "update_status": (_STR, True),
            "version": (_OPT_STR, False),
            "partitions": (_LIST, False),
            "progress": (_NUM, False),
            "seq": (_INT, False),
            "rollout": (_INT, False),
            "target_version": (_OPT_STR, False),
            "policy_revision": (_INT, False),     # the policy revision applied (the server resends a newer one)
            "cloud_config_revision": (_INT, False),  # the policy's cloud_config_revision last synced (idem)
            "etcd_credentials_revision": (_INT, False),  # the policy's etcd_credentials_revision applied (idem)
        },
        "event": {
            # policy_applied, update_installed, booted_new_version, rollback, update_error,
            # cloud_config_applied {revision, errors: [...]}, ...
            "kind": (_STR, True),
            "message": (_STR, False),
            "data": (_DICT, False),
            "at": (_NUM, False),                  # when it happened (epoch seconds, agent clock)
        },
        "pong": {
            "nonce": (_STR, False),
        },
    },
    "server": {
        "policy": {
            "revision": (_INT, True),
            "group": (_STR, True),                # the fleet group (lock group)
            "channel": (_STR, True),              # written as GROUP= in update.conf
            "reboot_strategy": (_STR, True),
            "reboot_window_start": (_OPT_STR, False),
            "reboot_window_length": (_OPT_STR, False),
            "etcd_endpoints": (_LIST, False),
            "lock_group": (_STR, False),
            # reboot coordination (issue 4): the org's etcd prefix ("fleet/<org slug>/"), its etcd
            # user, TLS material as PEM text, and the group's max concurrent reboots (semaphore max)
            "etcd_prefix": (_OPT_STR, False),
            "etcd_username": (_OPT_STR, False),
            "etcd_password": (_OPT_STR, False),
            "etcd_credentials_revision": (_INT, False),  # bumped when the host's etcd password is rotated
            "etcd_ca": (_OPT_STR, False),
            "etcd_cert": (_OPT_STR, False),
            "etcd_key": (_OPT_STR, False),
            "max_concurrent_reboots": (_INT, False),
            "heartbeat_interval": (_NUM, False),
            "updates_enabled": (_BOOL, False),
            "signing_key": (_OPT_STR, False),     # base64 Ed25519 public key (pinned on first use)
            "signing_key_id": (_OPT_STR, False),
            "signing_key_endorsement": (_OPT_STR, False),  # old key's signature over a rotated key
            "cloud_config_revision": (_INT, False),   # effective cloud-config revision reaching the group
            "cloud_config_url": (_OPT_STR, False),    # where the agent fetches its own effective document
            "cloud_config": (_OPT_STR, False),        # the document itself, when a server inlines it
        },
        "update": {
            "version": (_STR, True),
            "url": (_STR, True),
            "size": (_INT, True),
            "sha256": (_STR, True),
            "signature": (_STR, True),
            "rollout": (_INT, False),             # the rollout this grant belongs to
            "allow_downgrade": (_BOOL, False),    # only for an explicit channel rollback
            # seconds left of the group's update timeout: the agent retries a broken download until
            # then (without it: an hour, the server's default)
            "timeout": (_NUM, False),
        },
        "command": {
            "command": (_STR, True),
            "id": (_STR, False),
            "args": (_DICT, False),
        },
        "error": {
            "code": (_STR, True),
            "message": (_STR, True),
        },
        "ping": {
            "nonce": (_STR, False),
        },
    },
}


def _check_fields(kind: str, obj: dict, spec: dict) -> None:
    for name, (types, required) in spec.items():
        if name not in obj:
            if required:
                raise ProtocolError(ERR_INVALID, f"{kind}: missing field '{name}'")
            continue
        value = obj[name]
        # bool is an int subclass: do not accept True where a number is required.
        if isinstance(value, bool) and bool not in types:
            raise ProtocolError(ERR_INVALID, f"{kind}: field '{name}' has the wrong type")
        if not isinstance(value, types):
            raise ProtocolError(ERR_INVALID, f"{kind}: field '{name}' has the wrong type")
        if isinstance(value, str) and len(value) > (65536 if name in _PEM_FIELDS else 4096):
            raise ProtocolError(ERR_INVALID, f"{kind}: field '{name}' is too long")


def _check_partitions(kind: str, parts: list) -> None:
    if len(parts) > 16:
        raise ProtocolError(ERR_INVALID, f"{kind}: too many partitions")
    for p in parts:
        if not isinstance(p, dict):
            raise ProtocolError(ERR_INVALID, f"{kind}: each partition must be an object")
        _check_fields(f"{kind}.partitions", p, PARTITION_FIELDS)


def validate(msg: Any, sender: str) -> dict:
    """Validate an already parsed frame sent by ``sender`` ("agent" or "server")."""
    if not isinstance(msg, dict):
        raise ProtocolError(ERR_MALFORMED, "a frame must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str) or not kind:
        raise ProtocolError(ERR_MALFORMED, "a frame needs a string 'type' field")
    spec = MESSAGES[sender].get(kind)
    if spec is None:
        raise ProtocolError(ERR_UNKNOWN_TYPE, f"unknown message type '{kind[:64]}'")
    _check_fields(kind, msg, spec)
    if "partitions" in msg:
        _check_partitions(kind, msg["partitions"])
    if "update_status" in msg and msg["update_status"] not in UPDATE_STATUSES:
        raise ProtocolError(ERR_INVALID, f"{kind}: unknown update_status '{msg['update_status'][:64]}'")
    if kind == "policy" and msg["reboot_strategy"] not in REBOOT_STRATEGIES:
        raise ProtocolError(ERR_INVALID, f"policy: unknown reboot_strategy '{msg['reboot_strategy']}'")
    if kind == "command" and msg["command"] not in COMMANDS:
        raise ProtocolError(ERR_INVALID, f"command: unknown command '{msg['command']}'")
    return msg


def decode(text: str | bytes, sender: str) -> dict:
    """Parse and validate one frame sent by ``sender``; raises ProtocolError."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > MAX_FRAME_BYTES:
        raise ProtocolError(ERR_TOO_LARGE, f"frame of {size} bytes exceeds the {MAX_FRAME_BYTES} byte limit")
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(ERR_MALFORMED, f"frame is not valid JSON: {exc}") from None
    # PostgreSQL stores no NUL character in text or JSON: one in any string of a frame would fail
    # the batch write of every host sharing its tick.  JSON can only carry it escaped.
    if ("\\u0000" if isinstance(text, str) else b"\\u0000") in text:
        raise ProtocolError(ERR_INVALID, f"{msg.get('type', 'frame') if isinstance(msg, dict) else 'frame'}: "
                                         "strings may not contain NUL characters (\\u0000)")
    return validate(msg, sender)


def encode(msg_type: str, sender: str, /, **fields: Any) -> str:
    """Build, validate and serialise a frame (so neither side sends a bad one)."""
    msg = {"type": msg_type, **fields}
    validate(msg, sender)
    return json.dumps(msg, separators=(",", ":"))


def dumps(frame: dict) -> str:
    """The wire form of a frame built by the sender's own code (compact JSON; ``encode`` also validates)."""
    return json.dumps(frame, separators=(",", ":"))


def error_frame(code: str, message: str) -> str:
    return encode("error", "server", code=code, message=message)
