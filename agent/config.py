"""Agent configuration: what ``register`` stored in the state dir, plus exit codes and errors.

State dir layout (default /var/lib/fleet-agent):
  credential     the host credential, mode 0600
  agent.json     server, ws_url, host_id, disk, root, machine_id, hostname, group, org,
                 health_cmd (optional shell command run after booting a new version; non-zero = unhealthy),
                 health_timeout (seconds, default 60)
  state.json     local progress: last applied policy (revision, channel, ...; no secrets)
  etcd.json      etcd settings from the policy (endpoints, user, password, prefix, lock group, max,
                 TLS file paths), mode 0600; etcd-ca.pem, etcd-cert.pem, etcd-key.pem (0600)
  reboot-lock.json        "I hold the reboot semaphore" (written before rebooting, removed once released)
  signing-key.json        the pinned release signing key (agent/keys.py)
  pending-update.json     an installed update (or operator rollback) waiting for its boot (agent/boot.py)
  downloads/<sha256>.part payload downloads, kept across restarts for Range resumes
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent import protocol, updateconf
from agent.host import Host

try:
    from importlib.metadata import version as _pkg_version
    AGENT_VERSION = _pkg_version("fleetweb")
except Exception:  # PackageNotFoundError, or metadata unavailable
    AGENT_VERSION = "0.1.0"

DEFAULT_STATE_DIR = "/var/lib/fleet-agent"
DEFAULT_HEARTBEAT = 30.0
POLICY_TIMEOUT = protocol.POLICY_TIMEOUT
HEARTBEAT_ENV = "FLEET_AGENT_HEARTBEAT"

CREDENTIAL_FILE = "credential"
ETCD_FILE = "etcd.json"
LOCK_FILE = "reboot-lock.json"
ETCD_SECRET_FIELDS = ("etcd_password", "etcd_ca", "etcd_cert", "etcd_key")
_PEM_FILES = {"etcd_ca": "etcd-ca.pem", "etcd_cert": "etcd-cert.pem", "etcd_key": "etcd-key.pem"}
AGENT_FILE = "agent.json"
STATE_FILE = "state.json"

# Exit codes (distinct per failure the operator has to fix differently).
EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2                 # click's own code for bad options
EXIT_TOKEN_INVALID = 10
EXIT_TOKEN_EXPIRED = 11
EXIT_TOKEN_REVOKED = 12
EXIT_TOKEN_EXHAUSTED = 13
EXIT_REGISTER_REJECTED = 14    # another 4xx from the register endpoint
EXIT_HOST_EXISTS = 15          # the machine id is enrolled already and we do not hold its credential
EXIT_SERVER_UNREACHABLE = 20
EXIT_SERVER_ERROR = 21         # 5xx or a response we cannot understand
EXIT_HANDSHAKE_TIMEOUT = 22    # run --once: no policy arrived in time
EXIT_DISK_MISSING = 30
EXIT_MACHINE_ID_MISSING = 31
EXIT_NOT_REGISTERED = 40
EXIT_INSECURE_SERVER = 50      # register: plain http:// to a non-loopback server without --insecure-http
EXIT_KEY_MISMATCH = 51         # register: the server's signing key does not match --key-hash
EXIT_UNAUTHORIZED = 41         # run --once: the server rejected the credential

TOKEN_ERROR_EXITS = {
    "token_invalid": EXIT_TOKEN_INVALID,
    "token_expired": EXIT_TOKEN_EXPIRED,
    "token_revoked": EXIT_TOKEN_REVOKED,
    "token_exhausted": EXIT_TOKEN_EXHAUSTED,
}


class AgentError(Exception):
    """An expected failure: printed as one line ``agent: error: ...`` and exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


@dataclass
class Config:
    state_dir: Path
    server: str
    ws_url: str
    host_id: str
    disk: str
    root: str
    machine_id: str
    hostname: str
    group: str | None = None
    org: str | None = None
    health_cmd: str | None = None
    health_timeout: float = 60.0
    credential: str = field(default="", repr=False)

    # -- loading / saving ------------------------------------------------------------------
    @classmethod
    def load(cls, state_dir: str | os.PathLike) -> "Config":
        state_dir = Path(state_dir)
        try:
            data = json.loads((state_dir / AGENT_FILE).read_text())
            credential = (state_dir / CREDENTIAL_FILE).read_text().strip()
        except FileNotFoundError:
            raise AgentError(f"not registered: no {AGENT_FILE}/{CREDENTIAL_FILE} in {state_dir}; "
                             f"run 'agent register --server URL --token T' first", EXIT_NOT_REGISTERED) from None
        except PermissionError:
            raise AgentError(f"cannot read the state dir {state_dir}; run as root or pass --state-dir",
                             EXIT_NOT_REGISTERED) from None
        except ValueError:
            raise AgentError(f"{state_dir / AGENT_FILE} is corrupt; register again", EXIT_NOT_REGISTERED) from None
        known = {k: data.get(k) for k in ("server", "ws_url", "host_id", "disk", "root", "machine_id",
                                           "hostname", "group", "org")}
        missing = [k for k in ("server", "ws_url", "host_id", "disk", "root", "machine_id") if not known[k]]
        if missing or not credential:
            raise AgentError(f"{state_dir} is incomplete (missing {', '.join(missing) or 'credential'}); "
                             f"register again", EXIT_NOT_REGISTERED)
        known["hostname"] = known["hostname"] or ""
        health_cmd = data.get("health_cmd")
        if health_cmd is not None and not isinstance(health_cmd, str):
            raise AgentError(f"{state_dir / AGENT_FILE}: health_cmd must be a string (a shell command)")
        try:
            health_timeout = float(data.get("health_timeout") or 60.0)
        except (TypeError, ValueError):
            raise AgentError(f"{state_dir / AGENT_FILE}: health_timeout must be a number of seconds") from None
        known.update(health_cmd=health_cmd or None, health_timeout=health_timeout)
        return cls(state_dir=state_dir, credential=credential, **known)

    def save(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        updateconf.atomic_write(self.state_dir / CREDENTIAL_FILE, self.credential + "\n", 0o600)
        data = {k: v for k, v in asdict(self).items() if k not in ("state_dir", "credential")}
        updateconf.atomic_write(self.state_dir / AGENT_FILE, json.dumps(data, indent=2) + "\n", 0o644)

    # -- derived -----------------------------------------------------------------------------
    def host(self) -> Host:
        return Host(root=self.root, disk=self.disk, state_dir=self.state_dir)

    @property
    def heartbeat_override(self) -> float | None:
        value = os.environ.get(HEARTBEAT_ENV, "").strip()
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            raise AgentError(f"{HEARTBEAT_ENV}={value!r} is not a number of seconds") from None
        if seconds <= 0:
            raise AgentError(f"{HEARTBEAT_ENV} must be positive")
        return seconds


def load_state(state_dir: str | os.PathLike) -> dict:
    try:
        data = json.loads((Path(state_dir) / STATE_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def save_state(state_dir: str | os.PathLike, data: dict) -> None:
    updateconf.atomic_write(Path(state_dir) / STATE_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o644)


# -- etcd settings (reboot coordination) -------------------------------------------------------

@dataclass
class EtcdSettings:
    endpoints: list[str]
    group: str | None = None           # lock group (policy lock_group, else the fleet group)
    prefix: str = ""                   # the organization's key prefix, "fleet/<org slug>/"
    max: int = 1                       # the group's max concurrent reboots (semaphore max on creation)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None              # file paths (written from the policy's PEM text, 0600)
    cert: str | None = None
    key: str | None = None

    def client(self, timeout: float = 5.0):
        from agent.etcd import make_client
        return make_client(self.endpoints, user=self.username, password=self.password, ca=self.ca,
                           cert=self.cert, key=self.key, timeout=timeout)


def store_etcd_policy(state_dir: str | os.PathLike, policy: dict, org: str | None = None) -> dict:
    """Write the policy's etcd settings (with secrets) to etcd.json and PEM files, all 0600; return
    the policy without its secrets (what state.json may keep)."""
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str | None] = {}
    for name, filename in _PEM_FILES.items():
        text = policy.get(name)
        path = state_dir / filename
        if text:
            updateconf.atomic_write(path, text if text.endswith("\n") else text + "\n", 0o600)
            files[name] = str(path)
        else:
            path.unlink(missing_ok=True)
            files[name] = None
    prefix = policy.get("etcd_prefix")
    if prefix is None and org:
        prefix = f"fleet/{org}/"
    data = {"endpoints": list(policy.get("etcd_endpoints") or []),
            "group": policy.get("lock_group") or policy.get("group") or None,
            "prefix": prefix or "", "max": policy.get("max_concurrent_reboots") or 1,
            "username": policy.get("etcd_username") or None, "password": policy.get("etcd_password") or None,
            "ca": files["etcd_ca"], "cert": files["etcd_cert"], "key": files["etcd_key"]}
    updateconf.atomic_write(state_dir / ETCD_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)
    return {k: v for k, v in policy.items() if k not in ETCD_SECRET_FIELDS}


def load_etcd_settings(state_dir: str | os.PathLike) -> EtcdSettings | None:
    try:
        data = json.loads((Path(state_dir) / ETCD_FILE).read_text())
        return EtcdSettings(**{k: data.get(k) for k in EtcdSettings.__dataclass_fields__ if k in data})
    except (OSError, ValueError, TypeError):
        return None


def load_lock_file(state_dir: str | os.PathLike) -> dict | None:
    try:
        data = json.loads((Path(state_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("holder") else None


def save_lock_file(state_dir: str | os.PathLike, data: dict) -> None:
    updateconf.atomic_write(Path(state_dir) / LOCK_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o600)


def clear_lock_file(state_dir: str | os.PathLike) -> None:
    (Path(state_dir) / LOCK_FILE).unlink(missing_ok=True)
