"""imagebuilder payload: the USR filesystem image an update installs."""
from __future__ import annotations

import json
import subprocess

from agent import disk as gptdisk
from imagebuilder import disk as builder

from .test_disk import _cli, _sha256


def test_it_writes_a_usr_image_with_the_release_file_sized_to_the_usr_partition(tmp_path):
    rootfs = tmp_path / "usr"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "tool").write_text("#!/bin/sh\n")
    out = tmp_path / "payload.img"
    res = _cli("payload", "--version", "2.1.0", "--output", str(out), "--rootfs", str(rootfs), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info == {"path": str(out), "version": "2.1.0", "size": builder.DEFAULT_USR_MIB * builder.MIB,
                    "sha256": _sha256(out)}
    release = subprocess.run(["debugfs", "-R", f"cat {gptdisk.RELEASE_PATH}", str(out)], capture_output=True,
                             text=True).stdout
    assert gptdisk.parse_release(release)["COREOS_RELEASE_VERSION"] == "2.1.0"
    assert subprocess.run(["debugfs", "-R", "cat /bin/tool", str(out)], capture_output=True,
                          text=True).stdout == "#!/bin/sh\n"


def test_it_is_reproducible_and_smaller_sizes_work(tmp_path):
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    assert _cli("payload", "--version", "3.0.0", "--output", str(a), "--size-mib", "8", env=env).returncode == 0
    assert _cli("payload", "--version", "3.0.0", "--output", str(b), "--size-mib", "8", env=env).returncode == 0
    assert _sha256(a) == _sha256(b) and a.stat().st_size == 8 * builder.MIB
    res = _cli("payload", "--version", "3.0.0", "--output", str(a), "--size-mib", "0")
    assert res.returncode != 0 and "--size-mib" in res.stderr
