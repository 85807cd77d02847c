"""``/etc/coreos/update.conf``: read it, and rewrite keys in place (DESIGN §4).

Rewrite replaces the given keys where they are, keeps every other line (comments too) and
appends missing keys in sorted order.  The write is atomic (temp file + rename).
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

KEYS = ("GROUP", "SERVER", "REBOOT_STRATEGY")
_LINE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)$")


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def parse(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        m = _LINE.match(line)
        if m:
            values[m.group(1)] = _unquote(m.group(2))
    return values


def read(path: str | os.PathLike) -> dict[str, str]:
    """All KEY=value pairs of the file ({} when it does not exist)."""
    try:
        return parse(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


def rewrite_text(text: str, updates: dict[str, str | None]) -> str:
    """Apply ``updates`` to file text. A value of None removes the key's lines."""
    out: list[str] = []
    done: set[str] = set()
    for line in text.splitlines():
        m = None if line.lstrip().startswith("#") else _LINE.match(line)
        if m and m.group(1) in updates:
            key = m.group(1)
            value = updates[key]
            if value is None or key in done:
                continue          # removed, or a duplicate of a key already rewritten
            out.append(f"{key}={value}")
            done.add(key)
            continue
        out.append(line)
    for key in sorted(k for k, v in updates.items() if k not in done and v is not None):
        out.append(f"{key}={updates[key]}")
    return "\n".join(out) + "\n" if out else ""


def atomic_write(path: str | os.PathLike, data: str | bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file in the same directory with ``mode`` from creation, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def rewrite(path: str | os.PathLike, updates: dict[str, str | None]) -> bool:
    """Rewrite the file with ``updates``; returns True when the content changed."""
    path = Path(path)
    try:
        old = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        old, mode = "", 0o644
    new = rewrite_text(old, updates)
    if new == old:
        return False
    atomic_write(path, new, mode)
    return True
