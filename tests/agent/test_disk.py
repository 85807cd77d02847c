"""GPT reading/writing and the CoreOS gptprio A/B logic (agent/disk.py)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import zlib

import pytest

from agent import disk as gptdisk
from agent.disk import Partition

USR = gptdisk.TYPE_USR


def _crc_ok(raw_header: bytes) -> bool:
    size = struct.unpack_from("<I", raw_header, 12)[0]
    hdr = bytearray(raw_header[:size])
    crc = struct.unpack_from("<I", hdr, 16)[0]
    hdr[16:20] = b"\0\0\0\0"
    return zlib.crc32(bytes(hdr)) & 0xFFFFFFFF == crc


def _check_both_copies(path) -> None:
    data = open(path, "rb").read()
    total = len(data) // 512
    for lba in (1, total - 1):
        header = data[lba * 512:(lba + 1) * 512]
        assert header[:8] == b"EFI PART"
        assert _crc_ok(header), f"header CRC at LBA {lba}"
        my_lba, alt_lba = struct.unpack_from("<QQ", header, 24)
        assert my_lba == lba
        assert alt_lba == (total - 1 if lba == 1 else 1)
        entries_lba, n, size, crc = struct.unpack_from("<QIII", header, 72)
        entries = data[entries_lba * 512:entries_lba * 512 + n * size]
        assert zlib.crc32(entries) & 0xFFFFFFFF == crc, f"entries CRC for header at LBA {lba}"
    assert data[510:512] == b"\x55\xaa" and data[446 + 4] == 0xEE


def _three_usr(small_gpt, prios):
    """Partitions 2,3,4 of USR type with (priority, tries, successful)."""
    path, table = small_gpt
    for i, (prio, tries, ok) in enumerate(prios):
        number = i + 2
        p = Partition(number=number, label=f"USR-{number}", type_guid=USR,
                      unique_guid=f"00000000-0000-0000-0000-00000000000{number}",
                      first_lba=2048 + i * 1024, last_lba=2048 + i * 1024 + 1023)
        p.priority, p.tries, p.successful = prio, tries, ok
        table.partitions.append(p)
    gptdisk.write_gpt(path, table)
    return path


def test_it_round_trips_a_gpt_with_valid_crcs_in_both_copies(small_gpt):
    path, table = small_gpt
    table.partitions.append(Partition(3, "USR-A", USR, "aaaaaaaa-0000-4000-8000-000000000003", 2048, 4095,
                                      attributes=(1 << 56) | (1 << 48)))
    table.partitions.append(Partition(9, "ROOT", gptdisk.TYPE_ROOT, "aaaaaaaa-0000-4000-8000-000000000009", 4096,
                                      table.last_usable))
    gptdisk.write_gpt(path, table)
    _check_both_copies(path)
    back = gptdisk.read_gpt(path)
    assert back.disk_guid == table.disk_guid
    assert [(p.number, p.label, p.type_guid, p.unique_guid, p.first_lba, p.last_lba, p.attributes)
            for p in back.partitions] == \
           [(p.number, p.label, p.type_guid, p.unique_guid, p.first_lba, p.last_lba, p.attributes)
            for p in table.partitions]
    usr = back.get("USR-A")
    assert (usr.priority, usr.tries, usr.successful) == (1, 0, True)


def test_it_writes_a_gpt_that_sfdisk_accepts(disk_image):
    verify = subprocess.run(["sfdisk", "--verify", str(disk_image)], capture_output=True, text=True)
    assert verify.returncode == 0 and "No errors detected" in verify.stdout, verify.stdout + verify.stderr
    table = json.loads(subprocess.run(["sfdisk", "--json", str(disk_image)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    names = {p["node"].rsplit("img", 1)[1]: p for p in table["partitions"]}
    assert {k: v["name"] for k, v in names.items()} == {
        "1": "EFI-SYSTEM", "2": "BIOS-BOOT", "3": "USR-A", "4": "USR-B", "6": "OEM", "7": "OEM-CONFIG", "9": "ROOT"}
    assert names["3"]["type"].lower() == USR
    assert names["9"]["type"].lower() == gptdisk.TYPE_ROOT
    # sfdisk shows our attribute bits the cgpt/gptprio way: GUID:48 (priority 1), GUID:56 (successful)
    assert names["3"]["attrs"] == "GUID:48,56"
    # ROOT grows to the end of the usable area
    assert names["9"]["start"] + names["9"]["size"] - 1 == table["lastlba"]


def test_it_rewrites_both_copies_when_attributes_change(disk_image):
    gptdisk.modify(disk_image, gptdisk.install_prepare, "USR-B")
    _check_both_copies(disk_image)
    subprocess.run(["sfdisk", "--verify", str(disk_image)], check=True, capture_output=True)
    # the backup copy alone carries the same data
    data = bytearray(open(disk_image, "rb").read())
    data[512:1024] = bytes(512)          # destroy the primary header
    broken = disk_image.with_suffix(".broken")
    broken.write_bytes(bytes(data))
    from_backup = gptdisk.read_gpt(broken)
    assert from_backup.get("USR-B").priority == 2 and from_backup.get("USR-B").tries == 1


def test_it_preserves_other_attribute_bits_when_setting_priority_tries_successful():
    other_bits = (1 << 0) | (1 << 2) | (1 << 47) | (1 << 57) | (1 << 63)
    p = Partition(3, "USR-A", USR, gptdisk.ZERO_GUID, 34, 100, attributes=other_bits)
    p.priority, p.tries, p.successful = 15, 7, True
    assert (p.priority, p.tries, p.successful) == (15, 7, True)
    assert p.attributes & other_bits == other_bits
    p.priority, p.tries, p.successful = 0, 0, False
    assert p.attributes == other_bits
    with pytest.raises(ValueError):
        p.priority = 16


def test_it_boots_partitions_2_2_2_3_3_4_4_4_like_the_grub_gptprio_test(small_gpt):
    path = _three_usr(small_gpt, [(3, 3, False), (2, 2, False), (1, 0, True)])
    sequence = [gptdisk.boot_choice(path).number for _ in range(9)]
    assert sequence == [2, 2, 2, 3, 3, 4, 4, 4, 4]
    _check_both_copies(path)


def test_it_breaks_priority_ties_by_the_lower_partition_number(small_gpt):
    path = _three_usr(small_gpt, [(0, 0, True), (5, 0, True), (5, 1, False)])
    assert gptdisk.boot_choice(path).number == 3


def test_it_chooses_nothing_when_no_partition_is_bootable(small_gpt):
    path = _three_usr(small_gpt, [(0, 3, True), (2, 0, False), (0, 0, False)])
    assert gptdisk.boot_choice(path) is None


def test_it_matches_the_design_install_vector(disk_image):
    gptdisk.modify(disk_image, gptdisk.install_prepare, "USR-B")
    table = gptdisk.read_gpt(disk_image)
    new, old = table.get("USR-B"), table.get("USR-A")
    assert (new.priority, new.tries, new.successful) == (2, 1, False)
    assert (old.priority, old.tries, old.successful) == (1, 0, True)


def test_it_boots_the_new_partition_once_then_keeps_it_after_mark_good(disk_image):
    gptdisk.modify(disk_image, gptdisk.install_prepare, "USR-B")
    assert gptdisk.boot_choice(disk_image).label == "USR-B"
    gptdisk.modify(disk_image, gptdisk.mark_good, "USR-B")
    table = gptdisk.read_gpt(disk_image)
    new, old = table.get("USR-B"), table.get("USR-A")
    assert (new.priority, new.tries, new.successful) == (2, 0, True)
    assert old.priority == 1
    assert [gptdisk.boot_choice(disk_image).label for _ in range(3)] == ["USR-B"] * 3


def test_it_rolls_back_when_the_new_partition_fails_before_mark_good(disk_image):
    gptdisk.modify(disk_image, gptdisk.install_prepare, "USR-B")
    assert gptdisk.boot_choice(disk_image).label == "USR-B"    # first try: tries 1 -> 0
    # the new /usr never got marked good: next boot falls back to the old one
    assert gptdisk.boot_choice(disk_image).label == "USR-A"
    b = gptdisk.read_gpt(disk_image).get("USR-B")
    assert (b.priority, b.tries, b.successful) == (2, 0, False)


def test_it_prioritizes_like_cgpt_and_compresses_at_the_top(small_gpt):
    path = _three_usr(small_gpt, [(15, 0, True), (14, 0, True), (0, 0, False)])
    table = gptdisk.read_gpt(path)
    gptdisk.prioritize(table, 4)
    prios = {p.number: p.priority for p in table.usr_partitions()}
    assert prios[4] > prios[2] > prios[3] > 0
    assert prios[4] <= 15
    # already strictly highest: nothing moves
    gptdisk.prioritize(table, 4)
    assert {p.number: p.priority for p in table.usr_partitions()} == prios


def test_it_prioritizes_above_an_equal_priority(small_gpt):
    path = _three_usr(small_gpt, [(2, 0, True), (2, 0, True), (0, 0, False)])
    table = gptdisk.read_gpt(path)
    gptdisk.prioritize(table, 3)
    assert (table.get(3).priority, table.get(2).priority) == (3, 2)


def test_it_reads_the_release_of_usr_a_and_none_for_an_empty_usr_b(disk_image):
    release = gptdisk.read_release(disk_image, "USR-A")
    assert release == {"COREOS_RELEASE_VERSION": "1.0.0", "COREOS_RELEASE_BOARD": "amd64-usr",
                       "COREOS_RELEASE_APPID": "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"}
    assert gptdisk.read_release(disk_image, "USR-B") is None
    assert gptdisk.read_release(disk_image, 9) is None             # ext4 without a release file


def test_it_reports_partitions_in_the_protocol_shape(disk_image):
    from agent import protocol

    report = gptdisk.partition_report(disk_image, 3)
    assert report == [
        {"label": "USR-A", "number": 3, "version": "1.0.0", "priority": 1, "tries": 0, "successful": True,
         "active": True},
        {"label": "USR-B", "number": 4, "version": None, "priority": 0, "tries": 0, "successful": False,
         "active": False},
    ]
    protocol.encode("status", "agent", update_status="IDLE", partitions=report)


def test_it_refuses_a_file_without_a_gpt(tmp_path):
    path = tmp_path / "blank.img"
    path.write_bytes(bytes(1024 * 1024))
    with pytest.raises(gptdisk.GptError):
        gptdisk.read_gpt(path)
    with pytest.raises(gptdisk.GptError):
        gptdisk.read_gpt(tmp_path / "missing.img")
    assert not os.path.exists(tmp_path / "missing.img")
