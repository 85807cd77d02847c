from django import template

from ..choices import HOLDER_COLOURS, LockEventKind

register = template.Library()


@register.filter
def holder_colour(holder: dict) -> str:
    return HOLDER_COLOURS["stuck" if holder.get("stuck") else "holding"]


@register.filter
def lock_event_colour(kind: str) -> str:
    return LockEventKind.colour(kind)
