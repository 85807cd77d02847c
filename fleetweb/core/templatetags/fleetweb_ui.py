"""Template helpers: colours come from the choices, drawings are computed here so templates only
place shapes."""
from __future__ import annotations

from django import template

from fleetweb.fleet.choices import UPDATE_STATUS_COLOURS, EventKind
from fleetweb.updates.choices import ChannelName

register = template.Library()


@register.filter
def event_colour(kind: str) -> str:
    return EventKind.colour(kind)


@register.filter
def channel_colour(name: str) -> str:
    return ChannelName.colour(name or "")


@register.filter
def status_colour(status: str) -> str:
    return UPDATE_STATUS_COLOURS.get(status, "grey")


# EnrollmentToken.state values (fleetweb/fleet/models.py) and how they read at a glance.
TOKEN_STATE_COLOURS = {"active": "green", "expired": "grey", "used up": "grey", "revoked": "red"}


@register.filter
def token_state_colour(state: str) -> str:
    return TOKEN_STATE_COLOURS.get(state, "grey")


@register.filter
def event_label(kind: str) -> str:
    return EventKind(kind).label if kind in EventKind.values else kind


# The CoreOS GPT layout (DESIGN §4), drawn left to right.  Widths are for reading, not to scale.
DISK_LAYOUT = [
    (1, "EFI-SYSTEM", "vfat · boot", 96),
    (2, "BIOS-BOOT", "grub", 82),
    (3, "USR-A", "/usr (ro)", 250),
    (4, "USR-B", "/usr (ro)", 250),
    (6, "OEM", "ext4", 76),
    (7, "OEM-CONFIG", "", 92),
    (9, "ROOT", "ext4 · grown to disk", 204),
]
DISK_PAD, DISK_GAP = 10, 6


@register.simple_tag
def disk_layout(partitions) -> dict:
    """Boxes of the GPT drawing; USR-A/USR-B carry the reported gptprio attributes."""
    reported = {p.get("label"): p for p in (partitions or []) if isinstance(p, dict)}
    x, boxes = DISK_PAD, []
    for number, label, note, width in DISK_LAYOUT:
        part = reported.get(label)
        box = {"number": number, "label": label, "note": note, "x": x, "w": width, "cx": x + width / 2,
               "usr": label.startswith("USR-"), "part": part, "active": bool(part and part.get("active"))}
        if box["usr"] and part:
            box["version"] = part.get("version") or "empty"
            box["attrs"] = (f"prio {part.get('priority', 0)} · tries {part.get('tries', 0)} · "
                            f"{'successful' if part.get('successful') else 'not successful'}")
            box["state"] = ("active" if box["active"] else
                            "fallback" if part.get("successful") and part.get("priority", 0) > 0 else
                            "next boot" if part.get("tries", 0) > 0 and part.get("priority", 0) > 0 else
                            "unused")
        boxes.append(box)
        x += width + DISK_GAP
    return {"boxes": boxes, "width": x - DISK_GAP + DISK_PAD, "height": 150}


@register.simple_tag
def bar_chart(rows, label_key="version", value_key="n", bar_width=420) -> dict:
    """Horizontal bars (inline SVG) for a list of {label_key, value_key} rows."""
    rows = list(rows)
    top = max((r[value_key] for r in rows), default=0) or 1
    total = sum(r[value_key] for r in rows) or 1
    label_w, row_h = 150, 28
    bars = []
    for i, r in enumerate(rows):
        w = max(2, round(bar_width * r[value_key] / top))
        bars.append({"label": r[label_key] or "unknown", "value": r[value_key], "y": i * row_h, "w": w,
                     "tx": label_w + w + 8, "pct": round(100 * r[value_key] / total)})
    return {"bars": bars, "label_w": label_w, "width": label_w + bar_width + 90,
            "height": max(row_h, len(rows) * row_h), "row_h": row_h}
