"""After a boot: was the pending update (or operator rollback) a success, a failure, or a rollback?

``<state-dir>/pending-update.json`` is written before the reboot an update or a rollback needs:

    {"kind": "update"|"rollback", "version", "partition", "label", "rollout",
     "previous_version", "previous_partition", "boot_id" (the boot that installed it),
     "phase": "installed"|"unhealthy", "reason", "failed_boot_id"}

:func:`assess` compares it with the running boot and returns what to do; the Agent reports it.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from agent import disk as gptdisk
from agent.updateconf import atomic_write

log = logging.getLogger("agent.boot")

PENDING_FILE = "pending-update.json"
HEALTH_TIMEOUT = 60.0

# assess() outcomes
NOTHING = "nothing"
WAIT_REBOOT = "wait-reboot"      # installed in this boot; the reboot has not happened yet
HEALTHY = "healthy"              # the new partition runs and passed the checks: marked good
UNHEALTHY = "unhealthy"          # running the new partition but it failed the checks: reboot to fall back
ROLLED_BACK = "rolled-back"      # running the previous partition again (fallback or operator rollback)
ROLLBACK_FAILED = "rollback-failed"


def load_pending(state_dir: str | os.PathLike) -> dict | None:
    try:
        data = json.loads((Path(state_dir) / PENDING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("partition") else None


def save_pending(state_dir: str | os.PathLike, data: dict) -> None:
    atomic_write(Path(state_dir) / PENDING_FILE, json.dumps(data, indent=2, sort_keys=True) + "\n", 0o644)


def clear_pending(state_dir: str | os.PathLike) -> None:
    try:
        (Path(state_dir) / PENDING_FILE).unlink()
    except FileNotFoundError:
        pass


def run_health_cmd(cmd: str, timeout: float, env: dict) -> str | None:
    """None when healthy, else the reason (one line)."""
    try:
        res = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **env}, check=False)
    except subprocess.TimeoutExpired:
        return f"health command {cmd!r} did not finish within {timeout:.0f}s"
    except OSError as exc:
        return f"health command {cmd!r} could not run: {exc}"
    if res.returncode != 0:
        lines = (res.stderr or res.stdout or "").strip().splitlines()
        return f"health command {cmd!r} exited with {res.returncode}" + (f": {lines[-1][:200]}" if lines else "")
    return None


def health_check(host, expected_version: str, partition: int, health_cmd: str | None,
                 timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None when the running partition is healthy, else the reason."""
    label = gptdisk.read_gpt(host.disk).get(partition).label
    release = gptdisk.read_release(host.disk, partition)
    if release is None:
        return f"{label} has no readable {gptdisk.RELEASE_PATH} (the payload is not a bootable /usr)"
    running = release.get("COREOS_RELEASE_VERSION")
    if running != expected_version:
        return f"{label} runs version {running}, expected {expected_version}"
    if health_cmd:
        return run_health_cmd(health_cmd, timeout, {"FLEET_VERSION": expected_version, "FLEET_USR": label})
    return None


@dataclass
class Assessment:
    outcome: str
    pending: dict = field(default_factory=dict)
    reason: str = ""
    version: str | None = None          # the version running now


def assess(host, state_dir, health_cmd: str | None = None, health_timeout: float = HEALTH_TIMEOUT) -> Assessment:
    """Decide what the pending update means for this boot; marks the partition good when healthy."""
    pending = load_pending(state_dir)
    if pending is None:
        return Assessment(NOTHING)
    boot_id = host.boot_id()
    active = host.active_partition()
    release = gptdisk.read_release(host.disk, active) if active is not None else None
    running = release.get("COREOS_RELEASE_VERSION") if release else None
    if boot_id == pending.get("boot_id"):
        return Assessment(WAIT_REBOOT, pending, version=running)
    if pending.get("phase") == "unhealthy" and boot_id == pending.get("failed_boot_id"):
        return Assessment(UNHEALTHY, pending, pending.get("reason", ""), running)   # reboot did not happen yet
    target = pending["partition"]
    if pending.get("kind") == "rollback":
        if active == target:
            return Assessment(ROLLED_BACK, pending, pending.get("reason") or "operator requested", running)
        return Assessment(ROLLBACK_FAILED, pending, f"the boot did not choose {pending.get('label')}; "
                                                   f"still on partition {active}", running)
    if active == target and pending.get("phase") != "unhealthy":
        reason = health_check(host, pending["version"], target, health_cmd, health_timeout)
        if reason is None:
            gptdisk.modify(host.disk, gptdisk.mark_good, target)
            log.info("booted %s on %s and it is healthy: marked good", pending["version"], pending.get("label"))
            return Assessment(HEALTHY, pending, version=running)
        log.error("the new version %s is unhealthy: %s", pending["version"], reason)
        save_pending(state_dir, {**pending, "phase": "unhealthy", "reason": reason, "failed_boot_id": boot_id})
        return Assessment(UNHEALTHY, pending, reason, running)
    if active == target:   # the failed partition came up again: do not loop, demote it for good
        gptdisk.modify(host.disk, gptdisk.mark_unbootable, target)
        reason = pending.get("reason") or "the new partition failed its health check"
        return Assessment(UNHEALTHY, pending, reason, running)
    if pending.get("phase") == "unhealthy":
        reason = pending.get("reason") or "the new version failed its health check"
    else:
        active_label = next((p.label for p in gptdisk.read_gpt(host.disk).partitions if p.number == active), None)
        reason = (f"{pending.get('label')} did not boot (no valid /usr or tries exhausted); "
                  f"the boot fell back to {active_label or 'partition ' + str(active)}")
    return Assessment(ROLLED_BACK, pending, reason, running)
