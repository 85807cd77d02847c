"""GPT disks and the CoreOS A/B (``gptprio``) logic: one implementation for agent, server and imagebuilder.

Pure Python (``struct`` + ``zlib.crc32``).  Works on disk image files and on block devices.

Layout we write (UEFI spec): protective MBR at LBA 0, primary header at LBA 1, primary entry
array at LBA 2.., backup entry array just before the last LBA, backup header at the last LBA.

A/B attributes (ChromeOS cgpt / CoreOS grub ``gptprio``), bits of the 64-bit attribute field:
priority = 48..51, tries = 52..55, successful = 56.  Every other bit is preserved.
"""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import uuid
import zlib
from dataclasses import dataclass, field

SECTOR = 512
GPT_SIGNATURE = b"EFI PART"
GPT_REVISION = 0x00010000
HEADER_SIZE = 92
HEADER_FMT = "<8sIIIIQQQQ16sQIII"
ENTRY_FMT = "<16s16sQQQ72s"
ENTRY_SIZE = 128
NUM_ENTRIES = 128

# Partition type GUIDs (CoreOS/Flatcar disk_layout.json).
TYPE_EFI_SYSTEM = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
TYPE_BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
TYPE_USR = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6"
TYPE_LINUX_DATA = "0fc63daf-8483-4772-8e79-3d69d8477de4"
TYPE_OEM_CONFIG = "c95dc21a-df0e-4340-8d7b-26cbfa9a03e0"
TYPE_ROOT = "3884dd41-8582-4404-b9a8-e9b84f2df50e"
ZERO_GUID = "00000000-0000-0000-0000-000000000000"

PRIORITY_SHIFT, PRIORITY_MASK = 48, 0xF
TRIES_SHIFT, TRIES_MASK = 52, 0xF
SUCCESSFUL_SHIFT = 56
MAX_PRIORITY = 15
MAX_TRIES = 15

RELEASE_PATH = "/share/coreos/release"
USR_LABELS = ("USR-A", "USR-B")


class GptError(Exception):
    """The disk has no valid GPT, or a request does not fit it."""


def _guid_to_bytes(value: str) -> bytes:
    return uuid.UUID(value).bytes_le


def _guid_from_bytes(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


@dataclass
class Partition:
    number: int                 # 1-based index into the entry array
    label: str
    type_guid: str
    unique_guid: str
    first_lba: int
    last_lba: int
    attributes: int = 0

    # -- A/B attribute bits ------------------------------------------------------------
    def _get(self, shift: int, mask: int) -> int:
        return (self.attributes >> shift) & mask

    def _set(self, shift: int, mask: int, value: int) -> None:
        value = int(value)
        if not 0 <= value <= mask:
            raise ValueError(f"value {value} does not fit a {mask.bit_length()}-bit field")
        self.attributes = (self.attributes & ~(mask << shift)) | (value << shift)

    @property
    def priority(self) -> int:
        return self._get(PRIORITY_SHIFT, PRIORITY_MASK)

    @priority.setter
    def priority(self, value: int) -> None:
        self._set(PRIORITY_SHIFT, PRIORITY_MASK, value)

    @property
    def tries(self) -> int:
        return self._get(TRIES_SHIFT, TRIES_MASK)

    @tries.setter
    def tries(self, value: int) -> None:
        self._set(TRIES_SHIFT, TRIES_MASK, value)

    @property
    def successful(self) -> bool:
        return bool(self._get(SUCCESSFUL_SHIFT, 1))

    @successful.setter
    def successful(self, value: bool) -> None:
        self._set(SUCCESSFUL_SHIFT, 1, 1 if value else 0)

    # -- geometry ----------------------------------------------------------------------
    @property
    def is_usr(self) -> bool:
        return self.type_guid.lower() == TYPE_USR

    @property
    def sectors(self) -> int:
        return self.last_lba - self.first_lba + 1

    def offset(self, sector_size: int = SECTOR) -> int:
        return self.first_lba * sector_size

    def size(self, sector_size: int = SECTOR) -> int:
        return self.sectors * sector_size

    def pack(self) -> bytes:
        name = self.label.encode("utf-16-le")
        if len(name) > 72:
            raise GptError(f"partition label {self.label!r} is longer than 36 UTF-16 code units")
        return struct.pack(
            ENTRY_FMT, _guid_to_bytes(self.type_guid), _guid_to_bytes(self.unique_guid),
            self.first_lba, self.last_lba, self.attributes, name.ljust(72, b"\0"),
        )


@dataclass
class Gpt:
    disk_guid: str
    total_sectors: int
    partitions: list[Partition] = field(default_factory=list)
    first_usable: int = 0
    last_usable: int = 0
    sector_size: int = SECTOR
    num_entries: int = NUM_ENTRIES
    entry_size: int = ENTRY_SIZE
    primary_entries_lba: int = 2

    @property
    def entries_sectors(self) -> int:
        return -(-self.num_entries * self.entry_size // self.sector_size)

    def __post_init__(self) -> None:
        if not self.first_usable:
            self.first_usable = self.primary_entries_lba + self.entries_sectors
        if not self.last_usable:
            self.last_usable = self.total_sectors - 2 - self.entries_sectors

    def get(self, key: int | str) -> Partition:
        """A partition by number (int) or label (str)."""
        for p in self.partitions:
            if (isinstance(key, int) and p.number == key) or (isinstance(key, str) and p.label == key):
                return p
        raise GptError(f"no partition {key!r} on this disk")

    def usr_partitions(self) -> list[Partition]:
        return sorted((p for p in self.partitions if p.is_usr), key=lambda p: p.number)

    # -- serialisation -----------------------------------------------------------------
    def entries_bytes(self) -> bytes:
        table = bytearray(self.num_entries * self.entry_size)
        for p in self.partitions:
            if not 1 <= p.number <= self.num_entries:
                raise GptError(f"partition number {p.number} outside 1..{self.num_entries}")
            start = (p.number - 1) * self.entry_size
            table[start:start + ENTRY_SIZE] = p.pack()
        return bytes(table)

    def header_bytes(self, my_lba: int, alternate_lba: int, entries_lba: int, entries_crc: int) -> bytes:
        def build(crc: int) -> bytes:
            return struct.pack(
                HEADER_FMT, GPT_SIGNATURE, GPT_REVISION, HEADER_SIZE, crc, 0, my_lba, alternate_lba,
                self.first_usable, self.last_usable, _guid_to_bytes(self.disk_guid), entries_lba,
                self.num_entries, self.entry_size, entries_crc,
            )
        raw = build(0)
        return build(zlib.crc32(raw) & 0xFFFFFFFF).ljust(self.sector_size, b"\0")

    def validate(self) -> None:
        seen: list[Partition] = []
        for p in sorted(self.partitions, key=lambda p: p.first_lba):
            if p.first_lba < self.first_usable or p.last_lba > self.last_usable or p.last_lba < p.first_lba:
                raise GptError(f"partition {p.number} ({p.label}) lies outside the usable area")
            if seen and p.first_lba <= seen[-1].last_lba:
                raise GptError(f"partition {p.number} overlaps partition {seen[-1].number}")
            seen.append(p)
        numbers = [p.number for p in self.partitions]
        if len(numbers) != len(set(numbers)):
            raise GptError("duplicate partition numbers")


# -- low-level I/O -------------------------------------------------------------------------

def _device_size(fd: int) -> int:
    return os.lseek(fd, 0, os.SEEK_END)


def _pread(fd: int, length: int, offset: int) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise GptError(f"short read at byte {offset}")
    return data


def _parse_header(raw: bytes) -> dict | None:
    fields = struct.unpack(HEADER_FMT, raw[:HEADER_SIZE])
    (sig, rev, hsize, crc, _res, my_lba, alt_lba, first, last, dguid, ent_lba, n_ent, ent_size, ent_crc) = fields
    if sig != GPT_SIGNATURE or hsize < HEADER_SIZE or hsize > len(raw):
        return None
    check = bytearray(raw[:hsize])
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(check)) & 0xFFFFFFFF != crc:
        return None
    if ent_size < ENTRY_SIZE or n_ent == 0 or n_ent * ent_size > 1024 * 1024:
        return None
    return dict(revision=rev, my_lba=my_lba, alternate_lba=alt_lba, first_usable=first, last_usable=last,
                disk_guid=_guid_from_bytes(dguid), entries_lba=ent_lba, num_entries=n_ent,
                entry_size=ent_size, entries_crc=ent_crc)


def _parse_entries(raw: bytes, n: int, size: int) -> list[Partition]:
    parts = []
    for i in range(n):
        ent = raw[i * size:i * size + ENTRY_SIZE]
        tguid, uguid, first, last, attrs, name = struct.unpack(ENTRY_FMT, ent)
        if tguid == bytes(16):
            continue
        label = name.decode("utf-16-le", errors="replace").split("\0", 1)[0]
        parts.append(Partition(number=i + 1, label=label, type_guid=_guid_from_bytes(tguid),
                               unique_guid=_guid_from_bytes(uguid), first_lba=first, last_lba=last,
                               attributes=attrs))
    return parts


def _read_copy(fd: int, header_lba: int, sector_size: int) -> tuple[dict, bytes] | None:
    try:
        hdr = _parse_header(_pread(fd, sector_size, header_lba * sector_size))
    except (GptError, OSError, struct.error):
        return None
    if hdr is None or hdr["my_lba"] != header_lba:
        return None
    length = hdr["num_entries"] * hdr["entry_size"]
    try:
        entries = _pread(fd, length, hdr["entries_lba"] * sector_size)
    except (GptError, OSError):
        return None
    if zlib.crc32(entries) & 0xFFFFFFFF != hdr["entries_crc"]:
        return None
    return hdr, entries


def read_gpt(path: str | os.PathLike) -> Gpt:
    """Read the GPT of a disk image or block device (primary copy; backup if the primary is bad)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise GptError(f"{path}: no such disk or image") from None
    try:
        total_bytes = _device_size(fd)
        for sector_size in (512, 4096):
            total = total_bytes // sector_size
            if total < 3:
                continue
            copy = _read_copy(fd, 1, sector_size) or _read_copy(fd, total - 1, sector_size)
            if copy is None:
                continue
            hdr, entries = copy
            gpt = Gpt(disk_guid=hdr["disk_guid"], total_sectors=total,
                      partitions=_parse_entries(entries, hdr["num_entries"], hdr["entry_size"]),
                      first_usable=hdr["first_usable"], last_usable=hdr["last_usable"],
                      sector_size=sector_size, num_entries=hdr["num_entries"], entry_size=hdr["entry_size"],
                      primary_entries_lba=hdr["entries_lba"] if hdr["my_lba"] == 1 else 2)
            return gpt
        raise GptError(f"{path}: no valid GPT found")
    finally:
        os.close(fd)


def _protective_mbr(total_sectors: int) -> bytes:
    mbr = bytearray(512)
    size = min(total_sectors - 1, 0xFFFFFFFF)
    entry = struct.pack("<B3sB3sII", 0, b"\x00\x02\x00", 0xEE, b"\xff\xff\xff", 1, size)
    mbr[446:446 + 16] = entry
    mbr[510:512] = b"\x55\xaa"
    return bytes(mbr)


def write_gpt(path: str | os.PathLike, gpt: Gpt, *, protective_mbr: bool = True) -> None:
    """Write both GPT copies (and a protective MBR) with valid CRCs. The file must already have its size."""
    gpt.validate()
    ss = gpt.sector_size
    entries = gpt.entries_bytes()
    entries_crc = zlib.crc32(entries) & 0xFFFFFFFF
    last = gpt.total_sectors - 1
    backup_entries_lba = last - gpt.entries_sectors
    primary = gpt.header_bytes(1, last, gpt.primary_entries_lba, entries_crc)
    backup = gpt.header_bytes(last, 1, backup_entries_lba, entries_crc)
    fd = os.open(path, os.O_RDWR)
    try:
        if _device_size(fd) < gpt.total_sectors * ss:
            raise GptError(f"{path} is smaller than the GPT says")
        if protective_mbr:
            os.pwrite(fd, _protective_mbr(gpt.total_sectors).ljust(ss, b"\0"), 0)
        os.pwrite(fd, primary, 1 * ss)
        os.pwrite(fd, entries, gpt.primary_entries_lba * ss)
        os.pwrite(fd, entries, backup_entries_lba * ss)
        os.pwrite(fd, backup, last * ss)
        os.fsync(fd)
    finally:
        os.close(fd)


def update_gpt(path: str | os.PathLike, gpt: Gpt) -> None:
    """Rewrite both GPT copies of an existing disk (keeps the existing MBR)."""
    write_gpt(path, gpt, protective_mbr=False)


def new_gpt(total_bytes: int, disk_guid: str, sector_size: int = SECTOR) -> Gpt:
    return Gpt(disk_guid=disk_guid, total_sectors=total_bytes // sector_size, sector_size=sector_size)


# -- A/B logic (gptprio / cgpt) ------------------------------------------------------------

def choose_boot(gpt: Gpt) -> Partition | None:
    """The gptprio choice, in memory: the chosen partition (tries decremented) or None."""
    best: Partition | None = None
    for p in gpt.usr_partitions():
        if p.priority > 0 and (p.tries > 0 or p.successful):
            if best is None or p.priority > best.priority:
                best = p
    if best is not None and best.tries > 0:
        best.tries -= 1
    return best


def boot_choice(path: str | os.PathLike) -> Partition | None:
    """Run the gptprio choice on a disk and write the decremented tries back (both copies)."""
    gpt = read_gpt(path)
    before = {p.number: p.attributes for p in gpt.partitions}
    chosen = choose_boot(gpt)
    if chosen is not None and before[chosen.number] != chosen.attributes:
        update_gpt(path, gpt)
    return chosen


def _resolve(gpt: Gpt, target: Partition | int | str) -> Partition:
    if isinstance(target, Partition):
        return gpt.get(target.number)
    return gpt.get(target)


def prioritize(gpt: Gpt, target: Partition | int | str) -> Partition:
    """cgpt ``prioritize``: the target becomes the strictly highest USR priority.

    Other USR partitions keep their relative order, and those above 0 stay above 0; when the
    target would exceed 15, the others are compressed to ranks 1..k first.
    """
    tgt = _resolve(gpt, target)
    others = [p for p in gpt.usr_partitions() if p.number != tgt.number and p.priority > 0]
    top = max((p.priority for p in others), default=0)
    if tgt.priority > top:
        return tgt
    if top + 1 > MAX_PRIORITY:
        levels = sorted({p.priority for p in others})
        # Keep at most MAX_PRIORITY-1 distinct levels: merge the lowest ones into 1.
        excess = max(0, len(levels) - (MAX_PRIORITY - 1))
        rank = {}
        for i, level in enumerate(levels):
            rank[level] = max(1, i + 1 - excess)
        for p in others:
            p.priority = rank[p.priority]
        top = max(rank.values())
    tgt.priority = top + 1
    return tgt


def install_prepare(gpt: Gpt, target: Partition | int | str) -> Partition:
    """After writing a new /usr to ``target``: successful=0, tries=1, prioritize."""
    tgt = _resolve(gpt, target)
    tgt.successful = False
    tgt.tries = 1
    return prioritize(gpt, tgt)


def mark_good(gpt: Gpt, target: Partition | int | str) -> Partition:
    """After a healthy boot of ``target``: successful=1, tries=0, prioritize."""
    tgt = _resolve(gpt, target)
    tgt.successful = True
    tgt.tries = 0
    return prioritize(gpt, tgt)


def mark_unbootable(gpt: Gpt, target: Partition | int | str) -> Partition:
    """Before overwriting ``target``: priority 0, tries 0, successful 0 (gptprio never picks it)."""
    tgt = _resolve(gpt, target)
    tgt.priority = 0
    tgt.tries = 0
    tgt.successful = False
    return tgt


def other_usr(gpt: Gpt, active: Partition | int | str) -> Partition:
    """The other one of USR-A/USR-B (the inactive partition an update is written to)."""
    act = _resolve(gpt, active)
    pair = report_partitions(gpt)
    others = [p for p in pair if p.number != act.number]
    if act.number not in [p.number for p in pair] or len(others) != 1:
        raise GptError(f"partition {act.number} ({act.label}) is not one of an A/B pair of USR partitions")
    return others[0]


def modify(path: str | os.PathLike, func, target: Partition | int | str) -> Partition:
    """Read the disk, apply ``func(gpt, target)``, write both copies back; returns the target."""
    gpt = read_gpt(path)
    result = func(gpt, target)
    update_gpt(path, gpt)
    return result


# -- release file and the report the wire protocol carries ---------------------------------

def parse_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip().strip('"')
    return out


def read_release(disk_path: str | os.PathLike, partition: Partition | int | str) -> dict[str, str] | None:
    """``/share/coreos/release`` of a USR partition as a dict, or None (empty/unformatted/unreadable).

    Uses e2fsprogs' ``debugfs`` with the ``image?offset=BYTES`` io option: no copy, no mount.
    """
    try:
        gpt = read_gpt(disk_path)
        part = _resolve(gpt, partition)
    except GptError:
        return None
    debugfs = shutil.which("debugfs") or next(
        (p for p in ("/usr/sbin/debugfs", "/sbin/debugfs") if os.path.exists(p)), None)
    if debugfs is None:
        return None
    spec = f"{os.fspath(disk_path)}?offset={part.offset(gpt.sector_size)}"
    try:
        res = subprocess.run([debugfs, "-R", f"cat {RELEASE_PATH}", spec], capture_output=True,
                             timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if res.returncode != 0:
        return None
    info = parse_release(res.stdout.decode("utf-8", errors="replace"))
    return info if info.get("COREOS_RELEASE_VERSION") else None


def report_partitions(gpt: Gpt) -> list[Partition]:
    """The USR partitions a report shows: USR-A/USR-B by label, else every USR-type partition."""
    labelled = [p for p in gpt.partitions if p.label in USR_LABELS]
    return sorted(labelled or gpt.usr_partitions(), key=lambda p: p.number)


def partition_report(disk_path: str | os.PathLike, active_number: int | None) -> list[dict]:
    """``[{label, number, version, priority, tries, successful, active}]`` for USR-A and USR-B.

    This is exactly the ``partitions`` shape of agent/protocol.py and DESIGN §3.
    """
    gpt = read_gpt(disk_path)
    out = []
    for p in report_partitions(gpt):
        release = read_release(disk_path, p.number)
        out.append({
            "label": p.label,
            "number": p.number,
            "version": release.get("COREOS_RELEASE_VERSION") if release else None,
            "priority": p.priority,
            "tries": p.tries,
            "successful": p.successful,
            "active": p.number == active_number,
        })
    return out
