"""The initramfs's /bin/gptprio (busybox sh + awk), run on the host with the recipe's busybox, against
agent.disk: the same choice, the same bytes written back, DESIGN §4's grub test sequence."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent import disk as gptdisk
from imagebuilder import rootfs

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def gptprio(tmp_path_factory):
    d = tmp_path_factory.mktemp("busybox")
    busybox = rootfs.fetch_inputs().busybox
    (d / "bin").mkdir()
    shutil.copyfile(busybox, d / "busybox")
    (d / "busybox").chmod(0o755)
    subprocess.run([str(d / "busybox"), "--install", "-s", str(d / "bin")], check=True)
    script = d / "gptprio"
    script.write_text(rootfs.GPTPRIO_SCRIPT)

    def run(disk: Path, commit: bool = True) -> subprocess.CompletedProcess:
        args = [str(d / "bin" / "sh"), str(script)] + (["--commit"] if commit else []) + [str(disk)]
        return subprocess.run(args, capture_output=True, text=True, env={"PATH": str(d / "bin")}, timeout=120)
    return run


def _disk(path: Path, attrs: dict[int, tuple[int, int, int]]) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(8 * MIB)
    table = gptdisk.new_gpt(8 * MIB, "11111111-2222-3333-4444-555555555555")
    table.partitions.append(gptdisk.Partition(number=1, label="EFI-SYSTEM", type_guid=gptdisk.TYPE_EFI_SYSTEM,
                                              unique_guid=gptdisk.ZERO_GUID[:-1] + "1", first_lba=2048,
                                              last_lba=4095, attributes=(7 << 48) | 1))
    for i, (num, (prio, tries, ok)) in enumerate(sorted(attrs.items())):
        p = gptdisk.Partition(number=num, label=f"USR-{num}", type_guid=gptdisk.TYPE_USR,
                              unique_guid=gptdisk.ZERO_GUID[:-1] + str(num), first_lba=4096 + 2048 * i,
                              last_lba=4096 + 2048 * i + 2047, attributes=1 << 60)   # a bit to preserve
        p.priority, p.tries, p.successful = prio, tries, bool(ok)
        table.partitions.append(p)
    gptdisk.write_gpt(path, table)
    return path


def test_the_grub_test_sequence_of_design_section_4(gptprio, tmp_path):
    disk = _disk(tmp_path / "d.img", {2: (3, 3, 0), 3: (2, 2, 0), 4: (1, 0, 1)})
    seq = []
    for _ in range(9):
        res = gptprio(disk)
        assert res.returncode == 0, res.stderr
        seq.append(int(res.stdout.split()[0]))
    assert seq == [2, 2, 2, 3, 3, 4, 4, 4, 4]
    table = gptdisk.read_gpt(disk)
    assert [(p.priority, p.tries, p.successful) for p in table.usr_partitions()] == \
        [(3, 0, False), (2, 0, False), (1, 0, True)]
    assert all(p.attributes >> 60 == 1 for p in table.usr_partitions())
    assert table.get(1).attributes == (7 << 48) | 1                  # not a USR partition: untouched


@pytest.mark.parametrize("attrs", [
    {3: (1, 0, 1), 4: (2, 1, 0)},          # after an install: the new one, once
    {3: (1, 0, 1), 4: (2, 0, 0)},          # its try spent, not marked good: rollback
    {3: (2, 0, 1), 4: (2, 3, 0)},          # tie: the lower number
    {3: (0, 0, 1), 4: (5, 15, 0)},
])
def test_choice_and_written_bytes_match_agent_disk_boot_choice(gptprio, tmp_path, attrs):
    ours, theirs = _disk(tmp_path / "ours.img", attrs), _disk(tmp_path / "theirs.img", attrs)
    res = gptprio(ours)
    chosen = gptdisk.boot_choice(theirs)
    assert res.returncode == 0, res.stderr
    num, label, prio, tries, ok = res.stdout.split()
    assert (int(num), label) == (chosen.number, chosen.label)
    assert ours.read_bytes() == theirs.read_bytes()                   # both GPT copies, CRCs and all


def test_no_bootable_usr_and_a_broken_gpt_are_reported(gptprio, tmp_path):
    res = gptprio(_disk(tmp_path / "none.img", {3: (1, 0, 0), 4: (0, 1, 0)}))
    assert res.returncode == 1 and "no bootable USR partition" in res.stderr
    bad = _disk(tmp_path / "bad.img", {3: (1, 0, 1)})
    with open(bad, "r+b") as fh:
        fh.seek(1024 + 60)
        fh.write(b"\xff")                                             # primary entry array CRC no longer matches
    res = gptprio(bad, commit=False)
    assert res.returncode == 2 and "GPT" in res.stderr
    blank = tmp_path / "blank.img"
    blank.write_bytes(bytes(MIB))
    assert gptprio(blank).returncode == 2
