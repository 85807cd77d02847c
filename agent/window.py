"""Reboot windows (locksmith ``REBOOT_WINDOW_START`` / ``REBOOT_WINDOW_LENGTH``), DESIGN §4.

Start is ``HH:MM`` (daily) or ``Ddd HH:MM`` (weekly, sun..sat in any case); hours and minutes
may have one digit or extra leading zeros (``Sun 0:0``), as locksmithd reads them and as
coreos-cloudinit's validator accepts them.  Length is a Go duration (``1h``, ``90m``, ``1h30m``;
no ``d`` unit).  Both or neither.  A daily window is shorter than 24h, a weekly one shorter than
7×24h.  Times are the host's local wall clock.  The server validates group windows with this same
module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")   # index = datetime.weekday()
DAY = timedelta(days=1)
WEEK = timedelta(days=7)

_GO_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
_TIME = re.compile(r"^0*([0-9]{1,2}):0*([0-9]{1,2})$")   # ASCII digits, as Go


def parse_duration(text: str) -> timedelta:
    """Parse a Go ``time.ParseDuration`` string; raises ValueError naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("reboot window length is empty; use a Go duration such as 1h, 90m or 1h30m")
    s = text.strip()
    sign = 1
    if s[0] in "+-":
        sign = -1 if s[0] == "-" else 1
        s = s[1:]
    if s == "0":
        return timedelta(0)
    pos, total = 0, 0.0
    while pos < len(s):
        m = _GO_PART.match(s, pos)
        if m is None:
            raise ValueError(f"reboot window length {text!r} is not a Go duration "
                             f"(units ns, us, ms, s, m, h; e.g. 1h, 90m, 1h30m)")
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"reboot window length {text!r} is not a Go duration")
    return timedelta(seconds=sign * total)


def format_duration(delta: timedelta) -> str:
    secs = int(delta.total_seconds())
    h, rest = divmod(secs, 3600)
    m, s = divmod(rest, 60)
    out = (f"{h}h" if h else "") + (f"{m}m" if m else "") + (f"{s}s" if s else "")
    return out or "0s"


@dataclass(frozen=True)
class Window:
    weekday: int | None     # 0=Monday … 6=Sunday (datetime.weekday()); None for a daily window
    hour: int
    minute: int
    length: timedelta

    @property
    def period(self) -> timedelta:
        return DAY if self.weekday is None else WEEK

    def _last_start(self, dt: datetime) -> datetime:
        """The latest window start at or before ``dt``."""
        start = dt.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        if self.weekday is not None:
            start -= timedelta(days=(dt.weekday() - self.weekday) % 7)
        if start > dt:
            start -= self.period
        return start

    def contains(self, dt: datetime) -> bool:
        return dt < self._last_start(dt) + self.length

    def next_start(self, dt: datetime) -> datetime:
        """The earliest window start at or after ``dt``."""
        start = self._last_start(dt)
        return start if start == dt else start + self.period

    def wait(self, dt: datetime) -> timedelta:
        """How long until a reboot is allowed at ``dt`` (zero inside the window)."""
        return timedelta(0) if self.contains(dt) else self.next_start(dt) - dt

    @property
    def start_text(self) -> str:
        hm = f"{self.hour:02d}:{self.minute:02d}"
        return hm if self.weekday is None else f"{DAYS[self.weekday].capitalize()} {hm}"

    def __str__(self) -> str:
        return f"{self.start_text} for {format_duration(self.length)}"


def parse_start(text: str) -> tuple[int | None, int, int]:
    fields = text.split()
    if len(fields) == 1:
        day_name, hm = None, fields[0]
    elif len(fields) == 2:
        day_name, hm = fields
    else:
        raise ValueError(f"reboot window start {text!r} must be 'HH:MM' or 'Ddd HH:MM' (e.g. 'Sat 14:00')")
    weekday = None
    if day_name is not None:
        key = day_name.lower()
        if key not in DAYS:
            raise ValueError(f"reboot window start {text!r}: unknown day {day_name!r} (use sun, mon, … sat)")
        weekday = DAYS.index(key)
    m = _TIME.match(hm)
    if m is None:
        if hm.lower() in DAYS and day_name is None:
            raise ValueError(f"reboot window start {text!r} has a day but no time; use 'Ddd HH:MM'")
        raise ValueError(f"reboot window start {text!r}: time {hm!r} is not HH:MM")
    hour, minute = int(m.group(1)), int(m.group(2))
    if hour > 23:
        raise ValueError(f"reboot window start {text!r}: hour {hour} is out of range 00-23")
    if minute > 59:
        raise ValueError(f"reboot window start {text!r}: minute {minute} is out of range 00-59")
    return weekday, hour, minute


def parse_window(start: str | None, length: str | None) -> Window | None:
    """Parse a window; None when neither is set.  Raises ValueError with a message naming the problem."""
    start = (start or "").strip()
    length = (length or "").strip()
    if not start and not length:
        return None
    if not start:
        raise ValueError("reboot window length is set but the start is not; set both or neither")
    if not length:
        raise ValueError("reboot window start is set but the length is not; set both or neither")
    weekday, hour, minute = parse_start(start)
    duration = parse_duration(length)
    if duration <= timedelta(0):
        raise ValueError(f"reboot window length {length!r} must be positive")
    limit = DAY if weekday is None else WEEK
    if duration >= limit:
        kind = "daily" if weekday is None else "weekly"
        raise ValueError(f"reboot window length {length!r} is too long: a {kind} window must be "
                         f"shorter than {format_duration(limit)}")
    return Window(weekday=weekday, hour=hour, minute=minute, length=duration)
