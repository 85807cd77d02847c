"""Template helpers for releases, channels and rollouts: colours come from the choices, drawings
(the versions-over-time chart) are computed here so templates only place shapes.  Two panels live on
the fleet app's pages (group rollout policy, host update timeline) and bring their own data."""
from __future__ import annotations

from datetime import timedelta

from django import template
from django.utils import timezone

from agent import signing
from fleetweb.fleet.choices import EventKind
from fleetweb.updates.choices import HostUpdateState, RolloutStatus

register = template.Library()


@register.filter
def rollout_colour(status: str) -> str:
    return RolloutStatus.colour(status)


@register.filter
def host_state_colour(state: str) -> str:
    return HostUpdateState.colour(state)


@register.filter
def pct(part, whole) -> float:
    """Share of ``whole`` in percent, for widths (0 when there is nothing)."""
    try:
        return round(100 * float(part) / float(whole), 2) if whole else 0
    except (TypeError, ValueError):
        return 0


# ---------------------------------------------------------------------------------------------
# Group page: the rollout policy panel
# ---------------------------------------------------------------------------------------------

@register.simple_tag
def rollout_policy_panel(group, form=None) -> dict:
    from fleetweb.updates.forms import RolloutPolicyForm
    from fleetweb.updates.views import group_rollout_panel

    return {"form": form or RolloutPolicyForm(instance=group), **group_rollout_panel(group)}


# ---------------------------------------------------------------------------------------------
# Rollout page: hosts per version over time (stacked steps, inline SVG)
# ---------------------------------------------------------------------------------------------

# The release being rolled out is green; the versions it replaces get quiet colours.
TARGET_FILL = "#2f9e63"
OTHER_FILLS = ["#8fb3e6", "#c3b1ef", "#f2c48d", "#a9b4c1", "#8fd0cf", "#e8a3b8"]
CHART_W, CHART_H, PAD_L, PAD_T, PAD_B, PAD_R = 760, 190, 40, 10, 26, 12


def _clock(t, span_seconds: float) -> str:
    t = timezone.localtime(t)
    return t.strftime("%b %d %H:%M" if span_seconds > 86400 else "%H:%M:%S" if span_seconds < 600 else "%H:%M")


@register.simple_tag
def versions_chart(series) -> dict:
    start, end, steps, total = series["start"], series["end"], series["steps"], series["total"] or 1
    target = series["target"]
    span = max((end - start).total_seconds(), 60.0)   # at least a minute wide, so steps stay readable
    end = start + timedelta(seconds=span)
    versions = {v for _, c in steps for v in c}
    others = sorted((v for v in versions if v != target), key=_version_key, reverse=True)
    order = ([target] if target in versions else []) + others   # target at the bottom, rising
    fills = {target: TARGET_FILL}
    fills.update({v: OTHER_FILLS[i % len(OTHER_FILLS)] for i, v in enumerate(others)})

    def x(t):
        return round(PAD_L + (t - start).total_seconds() / span * CHART_W, 1)

    def y(n):
        return round(PAD_T + CHART_H - n / total * CHART_H, 1)

    xs = [x(t) for t, _ in steps] + [PAD_L + CHART_W]
    bands = []
    for i, v in enumerate(order):
        upper, lower = [], []
        for k, (_, c) in enumerate(steps):
            lo = sum(c.get(w, 0) for w in order[:i])
            hi = lo + c.get(v, 0)
            upper += [(xs[k], y(hi)), (xs[k + 1], y(hi))]
            lower += [(xs[k], y(lo)), (xs[k + 1], y(lo))]
        points = " ".join(f"{a},{b}" for a, b in upper + lower[::-1])
        bands.append({"version": v, "fill": fills[v], "points": points, "target": v == target,
                      "now": steps[-1][1].get(v, 0)})
    ticks = []
    for i in range(5):
        t = start + (end - start) * i / 4
        ticks.append({"x": round(PAD_L + CHART_W * i / 4, 1), "label": _clock(t, span),
                      "anchor": "start" if i == 0 else "end" if i == 4 else "middle"})
    return {"bands": bands, "ticks": ticks, "width": PAD_L + CHART_W + PAD_R, "height": PAD_T + CHART_H + PAD_B,
            "left": PAD_L, "right": PAD_L + CHART_W, "top": PAD_T, "bottom": PAD_T + CHART_H,
            "mid": round(PAD_T + CHART_H / 2, 1), "total": series["total"], "half": series["total"] / 2,
            "legend": sorted(bands, key=lambda b: _version_key(b["version"]), reverse=True),
            "changes": len(steps) - 1}


def _version_key(v: str):
    try:
        return (1, signing.version_key(v))
    except Exception:  # "unknown" and anything that is not a version sorts first
        return (0, ())


# ---------------------------------------------------------------------------------------------
# Host page: the update timeline and the A/B flip
# ---------------------------------------------------------------------------------------------

TIMELINE_KINDS = (EventKind.UPDATE_INSTALLED, EventKind.UPDATE_SUCCEEDED, EventKind.ROLLED_BACK,
                  EventKind.UPDATE_FAILED, EventKind.REBOOT_NEEDED, EventKind.AGENT_EVENT, EventKind.CONNECTED)
AGENT_STEPS = {"rebooting": ("Rebooting", "orange"), "reboot_waiting": ("Waiting to reboot", "orange"),
               "download_retrying": ("Download broke off, retrying", "orange"),
               "already_current": ("Already current", "grey"), "health_check_failed": ("Health check failed", "red")}
TIMELINE_LENGTH = 40


def _other_usr(label: str | None) -> str | None:
    return {"USR-A": "USR-B", "USR-B": "USR-A"}.get(label or "")


def _label_of(partitions, version) -> str | None:
    return next((p.get("label") for p in partitions or [] if isinstance(p, dict) and p.get("version") == version
                 and version), None)


@register.simple_tag
def update_timeline(host) -> dict:
    """The host's update story in time order: granted → installed → rebooted into X / rolled back."""
    from fleetweb.fleet.models import Event
    from fleetweb.updates.models import RolloutHost

    entries = []
    recent = Event.objects.filter(host=host, kind__in=TIMELINE_KINDS).order_by("-created", "-id")[:TIMELINE_LENGTH * 2]
    for e in reversed(list(recent)):  # oldest first, so the sort below keeps id order within a second
        d = e.data or {}
        entry = {"time": e.created, "colour": EventKind.colour(e.kind), "label": EventKind(e.kind).label,
                 "text": "", "flip": None, "rollout": d.get("rollout") if isinstance(d.get("rollout"), int) else None}
        version = d.get("version") if isinstance(d.get("version"), str) else None
        if e.kind == EventKind.CONNECTED:
            if not d.get("rebooted"):
                continue
            entry.update(label="Back after reboot", colour="grey", text=f"running {version or '?'}")
        elif e.kind == EventKind.AGENT_EVENT:
            step = AGENT_STEPS.get(d.get("kind"))
            if step is None:
                continue
            entry.update(label=step[0], colour=step[1], text=" ".join(
                s for s in (version, f"— {d['reason']}" if d.get("reason") else "") if s))
        elif e.kind == EventKind.UPDATE_INSTALLED:
            target = d.get("partition")
            entry["text"] = f"{version or '?'} written to {target or 'the inactive USR partition'}"
            if target:
                entry["flip"] = {"from": _other_usr(target), "to": target, "pending": True}
        elif e.kind == EventKind.UPDATE_SUCCEEDED:
            to = d.get("partition") or _label_of(host.partitions, version)
            entry.update(label="Rebooted into new version", text=f"{version or '?'}"
                         + (f" (was {d['previous_version']})" if d.get("previous_version") else ""))
            if to:
                entry["flip"] = {"from": _other_usr(to), "to": to}
        elif e.kind == EventKind.ROLLED_BACK:
            back = _label_of(host.partitions, version)
            entry["text"] = (f"back on {version or '?'}"
                             + (f" — {d['failed_version']} did not come up" if d.get("failed_version") else "")
                             + (f": {d['reason']}" if d.get("reason") else ""))
            if back:
                entry["flip"] = {"from": _other_usr(back), "to": back, "back": True}
        elif e.kind == EventKind.UPDATE_FAILED:
            entry["text"] = str(d.get("message") or d.get("code") or e.message)[:300]
        else:
            entry["text"] = version or ""
        entries.append(entry)
    for rh in RolloutHost.objects.filter(host=host).select_related("rollout__release").order_by("-id")[:TIMELINE_LENGTH]:
        if rh.granted_at:
            entries.append({"time": rh.granted_at, "colour": "blue", "label": "Granted", "rollout": rh.rollout_id,
                            "text": f"{rh.rollout.release.version} (from {rh.from_version or '?'})", "flip": None,
                            "state": rh, "attempts": rh.attempts})
    entries.sort(key=lambda en: en["time"])  # stable: grants (same second) stay after the events
    entries = entries[-TIMELINE_LENGTH:]
    current = next((rh for rh in RolloutHost.objects.filter(host=host, state__in=HostUpdateState.in_flight())
                    .select_related("rollout__release").order_by("-granted_at")[:1]), None)
    parts = {p.get("label"): p for p in host.partitions or [] if isinstance(p, dict)}
    active = next((p for p in parts.values() if p.get("active")), None)
    last_flip = next((en["flip"] | {"time": en["time"]} for en in reversed(entries)
                      if en["flip"] and not en["flip"].get("pending")), None)
    return {"entries": entries, "current": current, "active": active,
            "other": parts.get(_other_usr(active.get("label"))) if active else None, "last_flip": last_flip}


@register.simple_tag
def progress_parts(total, done, failed, in_flight) -> dict:
    """Widths of the progress bar: updated (green), failed (red), in flight (blue); done counts both
    updated and failed hosts (HostUpdateState.done)."""
    total, done, failed, in_flight = (int(v or 0) for v in (total, done, failed, in_flight))
    ok = max(done - failed, 0)
    return {"ok": ok, "ok_w": pct(ok, total), "failed_w": pct(failed, total), "flight_w": pct(in_flight, total)}


@register.filter
def duration(end, start) -> str:
    """``finished|duration:created`` → "42 s", "3 min 5 s", "2 h 10 min"."""
    if not end or not start:
        return ""
    s = max(int((end - start).total_seconds()), 0)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60} min"
