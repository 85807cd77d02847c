"""One full 8-platform build per session (small sizes), shared by the imagebuilder tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import signing

EPOCH = "1700000000"


def run_build(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imagebuilder.main", "build", "--output", str(out), *args],
                          capture_output=True, text=True, timeout=1800,
                          env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH, **(env or {})})


@pytest.fixture(scope="session")
def signing_key(tmp_path_factory):
    raw, public = signing.generate()
    path = tmp_path_factory.mktemp("key") / "key.raw"
    path.write_bytes(raw)
    return path, public


@pytest.fixture(scope="session")
def built(tmp_path_factory, signing_key):
    """``imagebuilder build`` of every platform (the CLI, with a signing key and --keep-work)."""
    out = tmp_path_factory.mktemp("build") / "out"
    res = run_build(out, "--version", "4.2.0", "--channel", "beta", "--sign-key", str(signing_key[0]),
                    "--keep-work")
    assert res.returncode == 0, res.stderr[-4000:]
    return out
