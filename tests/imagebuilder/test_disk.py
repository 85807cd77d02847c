"""imagebuilder: the CoreOS-layout disk, reproducibly."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from agent import disk as gptdisk
from imagebuilder import disk as builder

EXPECTED = [(1, "EFI-SYSTEM", gptdisk.TYPE_EFI_SYSTEM), (2, "BIOS-BOOT", gptdisk.TYPE_BIOS_BOOT),
            (3, "USR-A", gptdisk.TYPE_USR), (4, "USR-B", gptdisk.TYPE_USR), (6, "OEM", gptdisk.TYPE_LINUX_DATA),
            (7, "OEM-CONFIG", gptdisk.TYPE_OEM_CONFIG), (9, "ROOT", gptdisk.TYPE_ROOT)]


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "imagebuilder.main", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_it_writes_the_coreos_layout_with_usr_a_active_and_usr_b_empty(tmp_path):
    out = tmp_path / "disk.img"
    res = _cli("disk", "--output", str(out), "--version", "2.5.0")
    assert res.returncode == 0, res.stderr
    table = gptdisk.read_gpt(out)
    assert [(p.number, p.label, p.type_guid) for p in table.partitions] == EXPECTED
    a, b = table.get("USR-A"), table.get("USR-B")
    assert (a.priority, a.tries, a.successful) == (1, 0, True)
    assert (b.priority, b.tries, b.successful) == (0, 0, False)
    assert a.size() == b.size() == builder.DEFAULT_USR_MIB * builder.MIB
    assert table.get("ROOT").last_lba == table.last_usable
    assert out.stat().st_size == builder.DEFAULT_DISK_MIB * builder.MIB
    assert out.stat().st_blocks * 512 < out.stat().st_size / 2          # sparse
    assert gptdisk.read_release(out, "USR-A")["COREOS_RELEASE_VERSION"] == "2.5.0"
    assert gptdisk.read_release(out, "USR-B") is None
    # the EFI partition is FAT with the right label, as an outside tool sees it
    efi = table.get("EFI-SYSTEM")
    info = subprocess.run(["minfo", "-i", f"{out}@@{efi.offset()}", "::"], capture_output=True, text=True,
                          env={**os.environ, "MTOOLS_SKIP_CHECK": "1"})
    assert info.returncode == 0 and "EFI-SYSTEM" in info.stdout
    assert subprocess.run(["sfdisk", "--verify", str(out)], capture_output=True).returncode == 0


def test_it_builds_byte_identical_images_from_the_same_inputs(tmp_path):
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first, second = tmp_path / "a" / "disk.img", tmp_path / "b" / "disk.img"
    assert _cli("disk", "--output", str(first), "--version", "3.0.0", env=env).returncode == 0
    time.sleep(1.1)                                # a different second: ctimes must not leak in
    assert _cli("disk", "--output", str(second), "--version", "3.0.0", env=env).returncode == 0
    assert _sha256(first) == _sha256(second)
    third = tmp_path / "c" / "disk.img"
    assert _cli("disk", "--output", str(third), "--version", "3.0.1", env=env).returncode == 0
    assert _sha256(third) != _sha256(first)
    assert gptdisk.read_gpt(third).disk_guid != gptdisk.read_gpt(first).disk_guid


def test_it_puts_a_rootfs_tree_on_usr_a(tmp_path):
    rootfs = tmp_path / "usr"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    usr = builder.make_usr_image(rootfs, tmp_path / "usr.img", 8 * builder.MIB, version="4.0.0")
    cat = subprocess.run(["debugfs", "-R", "cat /bin/hello", str(usr)], capture_output=True, text=True)
    assert cat.stdout == "#!/bin/sh\necho hi\n"


def test_it_names_the_debian_package_when_a_tool_is_missing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(builder.os, "access", lambda *a: False)
    with pytest.raises(builder.BuildError, match="install the Debian package 'dosfstools'"):
        builder.find_tool("mkfs.vfat")


def test_it_refuses_a_disk_too_small_for_its_partitions(tmp_path):
    res = _cli("disk", "--output", str(tmp_path / "d.img"), "--version", "1", "--size-mib", "40")
    assert res.returncode == 2 and res.stderr.startswith("imagebuilder: error: --size-mib 40 is too small")
