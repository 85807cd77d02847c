"""Agent configuration: what ``register`` stored in the state dir, plus exit codes and errors.

State dir layout (default /var/lib/fleet-agent):
  credential     the host credential, mode 0600
  agent.json     server, ws_url, host_id, disk, root, machine_id, hostname, group, org,
                 health_cmd (optional shell command run after booting a new version; non-zero = unhealthy),
                 health_timeout (seconds, default 60)
  state.json     local progress: last applied policy (revision, channel, ...)
  signing-key.json        the pinned release signing key (agent/keys.py)
  pending-update.json     an installed update (or operator rollback) waiting for its boot (agent/boot.py)
  downloads/<sha256>.part payload downloads, kept across restarts for Range resumes
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent import updateconf
from agent.host import Host

try:
    from importlib.metadata import version as _pkg_version
    AGENT_VERSION = _pkg_version("fleetweb")
except Exception:  # PackageNotFoundError, or metadata unavailable
    AGENT_VERSION = "0.1.0"

DEFAULT_STATE_DIR = "/var/lib/fleet-agent"
DEFAULT_HEARTBEAT = 30.0
POLICY_TIMEOUT = 15.0
HEARTBEAT_ENV = "FLEET_AGENT_HEARTBEAT"

CREDENTIAL_FILE = "credential"
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
EXIT_SERVER_UNREACHABLE = 20
EXIT_SERVER_ERROR = 21         # 5xx or a response we cannot understand
EXIT_HANDSHAKE_TIMEOUT = 22    # run --once: no policy arrived in time
EXIT_DISK_MISSING = 30
EXIT_MACHINE_ID_MISSING = 31
EXIT_NOT_REGISTERED = 40
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
