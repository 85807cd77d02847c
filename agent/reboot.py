"""The one place that decides whether and when to reboot after an update (locksmith strategies).

``decide()`` is pure: it takes the strategy, the etcd endpoints, whether they answered (for
``best-effort``), the reboot window and the clock, and returns a :class:`Decision`.
``Agent.decide_reboot()`` carries it out (takes the semaphore for ``LOCK``, retries, reboots).

* ``reboot``       reboot now (at the start of the next reboot window, when one is set).
* ``etcd-lock``    inside the window, take the group's etcd semaphore, then reboot; the semaphore
                   is released after the boot.  Without endpoints the host waits and says why.
* ``best-effort``  decided at each attempt: ``etcd-lock`` when the policy's etcd endpoints answer,
                   else ``reboot``.  ``Decision.path`` says which (the agent logs a ``reboot_path``).
* ``off``          never reboot by itself: report ``reboot_needed`` and wait.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from agent.window import Window

DEFAULT_STRATEGY = "best-effort"
STRATEGIES = ("reboot", "etcd-lock", "best-effort", "off")

NOW = "reboot-now"
LOCK = "lock-then-reboot"      # take the etcd semaphore, then reboot
WAIT_WINDOW = "wait-window"
WAIT_LOCK = "wait-lock"        # etcd-lock without etcd endpoints: wait and say why
OFF = "off"

PATH_LOCK = "etcd-lock"
PATH_REBOOT = "reboot"


@dataclass(frozen=True)
class Decision:
    action: str
    reason: str
    strategy: str
    delay: float = 0.0       # seconds until the window opens (WAIT_WINDOW)
    path: str | None = None  # "etcd-lock" | "reboot" (None for off / waits before a path is chosen)


def effective_strategy(strategy: str | None, etcd_endpoints: list | None, etcd_up: bool | None = None) -> str:
    """``best-effort`` resolved: ``etcd-lock`` when endpoints are set and (if probed) answered."""
    strategy = strategy or DEFAULT_STRATEGY
    if strategy == "best-effort":
        return "etcd-lock" if etcd_endpoints and etcd_up is not False else "reboot"
    return strategy


def decide(strategy: str | None, etcd_endpoints: list | None, window: Window | None, now: datetime,
           etcd_up: bool | None = None) -> Decision:
    """ETCD_UP: whether the endpoints answered a probe just now (None: not probed; only
    ``best-effort`` looks at it)."""
    configured = strategy or DEFAULT_STRATEGY
    if configured not in STRATEGIES:
        configured = DEFAULT_STRATEGY
    effective = effective_strategy(configured, etcd_endpoints, etcd_up)
    if effective == "off":
        return Decision(OFF, "reboot strategy is off: reboot the host yourself to finish the update", configured)
    if window is not None and not window.contains(now):
        wait = window.wait(now).total_seconds()
        return Decision(WAIT_WINDOW, f"outside the reboot window {window}; rebooting in {wait:.0f}s", configured, wait)
    if effective == "etcd-lock":
        if not etcd_endpoints:
            return Decision(WAIT_LOCK, "reboot strategy etcd-lock but no etcd endpoints are configured: "
                                       "waiting for the etcd reboot lock", configured, path=PATH_LOCK)
        reason = ("etcd answered: taking the reboot lock" if configured == "best-effort"
                  else "reboot strategy etcd-lock: taking the reboot lock")
        return Decision(LOCK, reason, configured, path=PATH_LOCK)
    if configured == "best-effort":
        why = "no etcd endpoints configured" if not etcd_endpoints else "etcd did not answer"
        return Decision(NOW, f"reboot strategy best-effort: {why}, rebooting without the lock", configured,
                        path=PATH_REBOOT)
    return Decision(NOW, f"reboot strategy {configured}", configured, path=PATH_REBOOT)
