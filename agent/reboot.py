"""The one place that decides whether and when to reboot after an update (locksmith strategies).

``decide()`` is pure: it takes the strategy, the etcd endpoints, the reboot window and the clock,
and returns a :class:`Decision`.  ``Agent.decide_reboot()`` carries it out.

* ``reboot``       reboot now (inside the reboot window, when one is set).
* ``best-effort``  ``etcd-lock`` when etcd endpoints are configured, else ``reboot``.
* ``etcd-lock``    take the group's etcd semaphore first.  SEAM: the lock is a later issue; until
                   then the agent waits (status UPDATED_NEED_REBOOT) and says why.
* ``off``          never reboot by itself: report ``reboot_needed`` and wait.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.window import Window

DEFAULT_STRATEGY = "best-effort"

NOW = "reboot-now"
WAIT_WINDOW = "wait-window"
WAIT_LOCK = "wait-lock"
OFF = "off"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    strategy: str
    delay: float = 0.0       # seconds until the window opens (WAIT_WINDOW)


def effective_strategy(strategy: str | None, etcd_endpoints: list | None) -> str:
    strategy = strategy or DEFAULT_STRATEGY
    if strategy == "best-effort":
        return "etcd-lock" if etcd_endpoints else "reboot"
    return strategy


def decide(strategy: str | None, etcd_endpoints: list | None, window: Window | None, now: datetime) -> Decision:
    configured = strategy or DEFAULT_STRATEGY
    effective = effective_strategy(configured, etcd_endpoints)
    if effective == "off":
        return Decision(OFF, "reboot strategy is off: reboot the host yourself to finish the update", configured)
    if window is not None and not window.contains(now):
        wait = window.wait(now).total_seconds()
        return Decision(WAIT_WINDOW, f"outside the reboot window {window}; rebooting in {wait:.0f}s", configured, wait)
    if effective == "etcd-lock":
        # SEAM (later issue): acquire the etcd semaphore here, then return NOW.
        return Decision(WAIT_LOCK, "reboot strategy etcd-lock: waiting for the etcd reboot lock "
                                   "(this agent cannot take it yet)", configured)
    return Decision(NOW, f"reboot strategy {configured}" + (" (no etcd: reboot)" if configured == "best-effort"
                                                             else ""), configured)
