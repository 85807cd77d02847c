"""The uvicorn options of the web process, in one place: ``make run`` (scripts/devstack.py), the
benchmarks (bench/_common.py) and, checked by scripts/check_compose.py, docker-compose.yml and the
Dockerfile.  Stdlib only.

- ``--ws-max-size 1048576``: no agent frame is larger than 1 MiB (a status frame is a few hundred bytes).
- ``--ws-ping-interval 30 --ws-ping-timeout 120``: a web process busy with a reconnect storm answers
  late; an agent is dropped only when it has been silent for two minutes.
- ``--ws-per-message-deflate false``: no compression.  The frames are small JSON, and each compressed
  socket holds a zlib compressor and decompressor: measured with bench/fanin.py at 5,000 agents that
  offered it, 58 KiB of server memory per connection instead of 25, and 18 % fewer status frames
  stored per second.  The agent offers none either (agent/connection.py); a client that offers it is
  answered without it.
"""
from __future__ import annotations

WEBSOCKET_ARGS = ["--ws-max-size", "1048576", "--ws-ping-interval", "30", "--ws-ping-timeout", "120",
                  "--ws-per-message-deflate", "false"]


def missing_from(args: list[str]) -> list[str]:
    """The options of WEBSOCKET_ARGS that ``args`` (a uvicorn command line) lacks or sets otherwise,
    as ``--name value`` strings."""
    pairs = list(zip(WEBSOCKET_ARGS[::2], WEBSOCKET_ARGS[1::2], strict=True))
    out = []
    for name, value in pairs:
        at = [i for i, a in enumerate(args) if a == name]
        if not at or at[-1] + 1 >= len(args) or args[at[-1] + 1] != value:
            out.append(f"{name} {value}")
    return out
