"""Fixtures for agent tests: built disk images, scratch roots, a registered state dir, a tiny ws server."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from agent import disk as gptdisk
from agent.config import Config

AGENT = [sys.executable, "-m", "agent.main"]


@pytest.fixture(scope="session")
def golden_disk(tmp_path_factory) -> Path:
    """A disk built once per session by imagebuilder (version 1.0.0); copy it before changing it."""
    from imagebuilder.disk import build_disk

    path = tmp_path_factory.mktemp("golden") / "disk.img"
    build_disk(path, "1.0.0")
    return path


def sparse_copy(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dst)], check=True)
    return dst


@pytest.fixture
def disk_image(golden_disk, tmp_path) -> Path:
    return sparse_copy(golden_disk, tmp_path / "disk.img")


@pytest.fixture
def small_gpt(tmp_path):
    """A 4 MiB file with an empty GPT (no filesystems); returns (path, Gpt)."""
    path = tmp_path / "small.img"
    with open(path, "wb") as fh:
        fh.truncate(4 * 1024 * 1024)
    table = gptdisk.new_gpt(4 * 1024 * 1024, "11111111-2222-3333-4444-555555555555")
    return path, table


@pytest.fixture
def scratch_root(tmp_path) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "coreos").mkdir(parents=True)
    (root / "etc" / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    (root / "etc" / "coreos" / "update.conf").write_text("# managed by fleet\nGROUP=stable\nSERVER=https://example\n")
    return root


@pytest.fixture
def registered(tmp_path, disk_image, scratch_root):
    """A state dir as 'agent register' leaves it; ws_url is filled in by the test."""
    def make(ws_url: str = "ws://127.0.0.1:1/ws/agent/") -> Config:
        config = Config(state_dir=tmp_path / "state", server="http://127.0.0.1:1", ws_url=ws_url,
                        host_id="host-1", disk=str(disk_image), root=str(scratch_root),
                        machine_id="0123456789abcdef0123456789abcdef", hostname="node-1",
                        group="web", org="acme", credential="secret-credential")
        config.save()
        return config
    return make


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_agent(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*AGENT, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=Path(__file__).resolve().parents[2])


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())

