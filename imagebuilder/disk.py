"""Build GPT disk images with the CoreOS layout (DESIGN §4), without root, loop devices or mounts.

Pieces meant for reuse by later builds (payloads, platform artifacts):

* :func:`make_ext_image` / :func:`make_usr_image` — an ext2/ext4 filesystem image from a directory.
* :func:`make_vfat_image` — the EFI system partition.
* :func:`assemble_disk` — lay partition images out on a sparse disk file and write the GPT
  (with the one GPT writer, :mod:`agent.disk`).
* :func:`build_disk` — the whole default disk for a version.

Reproducible: the same inputs and ``SOURCE_DATE_EPOCH`` give byte-identical images (GUIDs and
filesystem UUIDs are derived from the inputs, mkfs runs with fixed UUIDs, hash seeds and
``E2FSPROGS_FAKE_TIME``, staged files get fixed mtimes).
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from agent import disk as gpt

MIB = 1024 * 1024
ALIGN = MIB
DEFAULT_EPOCH = 1704067200          # 2024-01-01T00:00:00Z, used when SOURCE_DATE_EPOCH is unset
DEFAULT_DISK_MIB = 100
DEFAULT_USR_MIB = 32
EFI_MIB = 8
BIOS_MIB = 1
OEM_MIB = 8
OEM_CONFIG_MIB = 1
BOARD = "amd64-usr"
APPID = "{e96281a6-d1af-4bde-9a0a-97b76e56dc57}"
GUID_NAMESPACE = uuid.UUID("6b1f6f3e-4a59-5c1e-9d0e-f1ee7febd15c")

TOOLS = {
    "mkfs.ext2": "e2fsprogs", "mkfs.ext4": "e2fsprogs", "debugfs": "e2fsprogs",
    "mkfs.vfat": "dosfstools", "mcopy": "mtools", "sfdisk": "fdisk", "qemu-img": "qemu-utils",
    "qemu-system-x86_64": "qemu-system-x86", "tar": "tar", "gzip": "gzip", "apt-get": "apt",
    "dpkg-deb": "dpkg",
}


class BuildError(Exception):
    """A build step failed; the message says what to fix."""


class ToolError(BuildError):
    """An external tool failed: which one, its exit code and its stderr (kept whole)."""

    def __init__(self, tool: str, returncode: int, stderr: str, cmd: list[str] | None = None) -> None:
        self.tool, self.returncode, self.stderr, self.cmd = tool, returncode, stderr, cmd or []
        lines = stderr.strip().splitlines()
        super().__init__(f"{tool} failed: {lines[-1] if lines else 'exit ' + str(returncode)}")


class Cancelled(BuildError):
    """The build was cancelled (``BuildContext.cancelled()`` turned true)."""


# Set by :func:`tool_hooks` so every tool run by the helpers below is logged and can be cancelled.
_log_hook: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("log", default=None)
_cancel_hook: contextvars.ContextVar[Callable[[], bool] | None] = contextvars.ContextVar("cancel", default=None)


@contextlib.contextmanager
def tool_hooks(log: Callable[[str], None] | None, cancelled: Callable[[], bool] | None) -> Iterator[None]:
    """Within the block, :func:`run_tool` logs each command line to ``log`` and polls ``cancelled``."""
    t1, t2 = _log_hook.set(log), _cancel_hook.set(cancelled)
    try:
        yield
    finally:
        _log_hook.reset(t1)
        _cancel_hook.reset(t2)


def run_tool(cmd: list[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None,
             log: Callable[[str], None] | None = None, stdin=None, stdout=None) -> str:
    """Run one tool; log it; kill it if the build is cancelled; raise ToolError with its stderr.

    Returns its stdout as text (unless ``stdout`` redirects it to a file).
    """
    log = log or _log_hook.get()
    cancelled = _cancel_hook.get()
    if log:
        log("$ " + " ".join(shlex.quote(str(c)) for c in cmd))
    if cancelled and cancelled():
        raise Cancelled("build cancelled")
    tool = os.path.basename(str(cmd[0]))
    try:
        proc = subprocess.Popen([str(c) for c in cmd], stdin=stdin if stdin is not None else subprocess.DEVNULL,
                                stdout=stdout if stdout is not None else subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=cwd, env={**os.environ, **(env or {})})
    except FileNotFoundError:
        pkg = TOOLS.get(tool, tool)
        raise ToolError(tool, 127, f"{tool} not found: install the Debian package '{pkg}'", cmd) from None
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            if cancelled and cancelled():
                proc.kill()
                proc.communicate()
                raise Cancelled(f"build cancelled while {tool} ran") from None
    text_err = (err or b"").decode(errors="replace")
    if proc.returncode != 0:
        text_out = (out or b"").decode(errors="replace") if stdout is None else ""
        raise ToolError(tool, proc.returncode, text_err or text_out, cmd)
    return (out or b"").decode(errors="replace") if stdout is None else ""


def find_tool(name: str) -> str:
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(p, os.X_OK)), None)
    if path is None:
        pkg = TOOLS.get(name, name)
        raise BuildError(f"{name} not found: install the Debian package '{pkg}' (apt-get install {pkg})")
    return path


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return DEFAULT_EPOCH
    try:
        return int(value)
    except ValueError:
        raise BuildError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None


def derive_guid(*parts: object) -> str:
    """A deterministic GUID from the build inputs."""
    return str(uuid.uuid5(GUID_NAMESPACE, "\x1f".join(str(p) for p in parts)))


def _run(cmd: list[str], env: dict | None = None) -> None:
    run_tool(cmd, env=env)


def _sparse_file(path: Path, size: int) -> None:
    with open(path, "wb") as fh:
        fh.truncate(size)


def normalize_tree(root: Path, epoch: int) -> None:
    """Give every staged file and directory the same mtime/atime (deepest first)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (epoch, epoch), follow_symlinks=False)
    os.utime(root, (epoch, epoch))


def stage_tree(src: Path | None, dst: Path, epoch: int) -> Path:
    """Copy ``src`` (may be None) into ``dst`` keeping symlinks; mtimes are normalised later."""
    if src is not None:
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    else:
        dst.mkdir(parents=True, exist_ok=True)
    return dst


def make_ext_image(src_dir: str | os.PathLike | None, output: str | os.PathLike, size_bytes: int, *,
                   label: str, fs_type: str = "ext4", seed: str = "", epoch: int | None = None) -> Path:
    """An ext2/3/4 image of ``size_bytes`` holding a copy of ``src_dir`` (``mkfs -d``), reproducibly."""
    if fs_type not in ("ext2", "ext3", "ext4"):
        raise BuildError(f"unsupported filesystem type {fs_type!r}")
    mkfs = find_tool(f"mkfs.{fs_type}")
    epoch = source_date_epoch() if epoch is None else epoch
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="imagebuilder-stage-") as tmp:
        staging = stage_tree(Path(src_dir) if src_dir else None, Path(tmp) / "root", epoch)
        normalize_tree(staging, epoch)
        _sparse_file(output, size_bytes)
        fs_uuid = derive_guid("fs", label, seed)
        hash_seed = derive_guid("hash", label, seed)
        _run([mkfs, "-q", "-F", "-L", label, "-U", fs_uuid, "-E", f"hash_seed={hash_seed},root_owner=0:0",
              "-d", str(staging), str(output)],
             env={"E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)})
        _clamp_ctimes(output, staging, epoch)
    return output


def _clamp_ctimes(image: Path, staging: Path, epoch: int) -> None:
    """``mkfs -d`` copies each file's ctime, which nobody can set: rewrite them all with debugfs."""
    debugfs = find_tool("debugfs")
    paths = ["/"]
    for dirpath, dirnames, filenames in os.walk(staging):
        for name in sorted(dirnames + filenames):
            paths.append("/" + os.path.relpath(os.path.join(dirpath, name), staging))
    with tempfile.NamedTemporaryFile("w", suffix=".debugfs", delete=False) as fh:
        for path in paths:
            quoted = '"' + path.replace('"', '\\"') + '"' if any(c in path for c in ' \t"') else path
            fh.write(f"sif {quoted} ctime @{epoch}\n")
        cmdfile = fh.name
    try:
        _run([debugfs, "-w", "-f", cmdfile, str(image)], env={"E2FSPROGS_FAKE_TIME": str(epoch)})
    finally:
        os.unlink(cmdfile)


def release_text(version: str, board: str = BOARD, appid: str = APPID) -> str:
    return (f"COREOS_RELEASE_VERSION={version}\nCOREOS_RELEASE_BOARD={board}\n"
            f"COREOS_RELEASE_APPID={appid}\n")


def make_usr_image(rootfs: str | os.PathLike | None, output: str | os.PathLike, size_bytes: int, *,
                   version: str, label: str = "USR-A", board: str = BOARD, epoch: int | None = None) -> Path:
    """The /usr filesystem (ext2) from a rootfs /usr tree, with ``/share/coreos/release`` for ``version``."""
    with tempfile.TemporaryDirectory(prefix="imagebuilder-usr-") as tmp:
        stage = stage_tree(Path(rootfs) if rootfs else None, Path(tmp) / "usr", 0)
        release = stage / "share" / "coreos" / "release"
        release.parent.mkdir(parents=True, exist_ok=True)
        release.write_text(release_text(version, board))
        return make_ext_image(stage, output, size_bytes, label=label, fs_type="ext2",
                              seed=f"usr|{version}|{label}", epoch=epoch)


def make_vfat_image(output: str | os.PathLike, size_bytes: int, *, label: str = "EFI-SYSTEM",
                    seed: str = "", files_dir: str | os.PathLike | None = None,
                    epoch: int | None = None) -> Path:
    """A FAT image (``mkfs.vfat --invariant`` with a derived volume id); files copied with mtools."""
    mkfs = find_tool("mkfs.vfat")
    epoch = source_date_epoch() if epoch is None else epoch
    output = Path(output)
    _sparse_file(output, size_bytes)
    volid = derive_guid("vfat", label, seed).replace("-", "")[:8]
    _run([mkfs, "--invariant", "-i", volid, "-n", label[:11], str(output)])
    if files_dir and any(Path(files_dir).iterdir()):
        mcopy = find_tool("mcopy")
        with tempfile.TemporaryDirectory(prefix="imagebuilder-vfat-") as tmp:
            stage = stage_tree(Path(files_dir), Path(tmp) / "efi", epoch)
            normalize_tree(stage, epoch)
            entries = sorted(str(p) for p in stage.iterdir())
            _run([mcopy, "-s", "-m", "-o", "-i", str(output), *entries, "::/"],
                 env={"MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": str(epoch)})
    return output


def install_bios_boot(disk_path: str | os.PathLike, table: gpt.Gpt, *, mkimage: str | os.PathLike,
                      moddir: str | os.PathLike, modules: tuple[str, ...], prefix: str,
                      work: str | os.PathLike) -> int:
    """GRUB for BIOS boot, without grub-install: ``grub-mkimage -O i386-pc`` into BIOS-BOOT and
    ``boot.img`` into the MBR's boot code (bytes 0-439; the disk signature and the protective
    partition entry are kept).  Patches what grub-bios-setup would: boot.img's kernel sector
    (0x5c) and the first blocklist of core.img's diskboot sector (0x1f4).  Returns core.img's size.
    """
    import struct

    bios = table.get("BIOS-BOOT")
    core_path = Path(work) / "core.img"
    run_tool([str(mkimage), "-O", "i386-pc", "-d", str(moddir), "-o", str(core_path), "-p", prefix, *modules])
    core = bytearray(core_path.read_bytes())
    sectors = -(-len(core) // gpt.SECTOR)
    if sectors > bios.sectors:
        raise BuildError(f"GRUB core.img ({len(core)} bytes) does not fit BIOS-BOOT ({bios.size()} bytes)")
    struct.pack_into("<QHH", core, 0x1F4, bios.first_lba + 1, sectors - 1, 0x820)
    boot = bytearray((Path(moddir) / "boot.img").read_bytes())
    struct.pack_into("<Q", boot, 0x5C, bios.first_lba)
    with open(disk_path, "r+b") as fh:
        fh.seek(bios.offset())
        fh.write(core)
        mbr = bytearray(os.pread(fh.fileno(), gpt.SECTOR, 0))
        mbr[:440] = boot[:440]
        os.pwrite(fh.fileno(), bytes(mbr), 0)
    return len(core)


@dataclass
class PartSpec:
    number: int
    label: str
    type_guid: str
    size_bytes: int | None            # None: grow to the end of the disk (only the last one)
    image: str | os.PathLike | None = None
    attributes: int = 0
    unique_guid: str | None = None
    priority: int | None = None
    tries: int | None = None
    successful: bool | None = None


def _copy_sparse(src: Path, fd: int, offset: int, limit: int) -> None:
    """dd conv=notrunc,sparse: copy ``src`` into the disk at ``offset``, skipping zero blocks."""
    size = src.stat().st_size
    if size > limit:
        raise BuildError(f"{src.name} ({size} bytes) does not fit its partition ({limit} bytes)")
    block = MIB
    zero = bytes(block)
    with open(src, "rb") as fh:
        pos = 0
        while True:
            chunk = fh.read(block)
            if not chunk:
                break
            if chunk != zero[:len(chunk)]:
                os.pwrite(fd, chunk, offset + pos)
            pos += len(chunk)


def assemble_disk(output: str | os.PathLike, total_bytes: int, parts: list[PartSpec], *,
                  disk_guid: str) -> gpt.Gpt:
    """Lay the partitions out in list order (1 MiB aligned) on a sparse file and write the GPT."""
    output = Path(output)
    if total_bytes % gpt.SECTOR:
        raise BuildError("disk size must be a multiple of 512 bytes")
    _sparse_file(output, total_bytes)
    table = gpt.new_gpt(total_bytes, disk_guid)
    align = ALIGN // table.sector_size
    lba = max(align, table.first_usable)
    for i, spec in enumerate(parts):
        lba = -(-lba // align) * align
        if spec.size_bytes is None:
            if i != len(parts) - 1:
                raise BuildError("only the last partition can grow to the end of the disk")
            last = table.last_usable
        else:
            last = lba + spec.size_bytes // table.sector_size - 1
        if last > table.last_usable or last < lba:
            raise BuildError(f"partition {spec.number} ({spec.label}) does not fit a {total_bytes // MIB} MiB disk")
        p = gpt.Partition(number=spec.number, label=spec.label, type_guid=spec.type_guid,
                          unique_guid=spec.unique_guid or derive_guid("part", disk_guid, spec.number, spec.label),
                          first_lba=lba, last_lba=last, attributes=spec.attributes)
        if spec.priority is not None:
            p.priority = spec.priority
        if spec.tries is not None:
            p.tries = spec.tries
        if spec.successful is not None:
            p.successful = spec.successful
        table.partitions.append(p)
        lba = last + 1
    fd = os.open(output, os.O_RDWR)
    try:
        for spec, p in zip(parts, table.partitions, strict=True):
            if spec.image is not None:
                _copy_sparse(Path(spec.image), fd, p.offset(table.sector_size), p.size(table.sector_size))
    finally:
        os.close(fd)
    gpt.write_gpt(output, table)
    return table


def build_disk(output: str | os.PathLike, version: str, *, size_mib: int = DEFAULT_DISK_MIB,
               usr_size_mib: int = DEFAULT_USR_MIB, rootfs: str | os.PathLike | None = None,
               epoch: int | None = None) -> gpt.Gpt:
    """The default disk: EFI, BIOS-BOOT, USR-A (``version``), empty USR-B, OEM, OEM-CONFIG, ROOT."""
    epoch = source_date_epoch() if epoch is None else epoch
    fixed = EFI_MIB + BIOS_MIB + 2 * usr_size_mib + OEM_MIB + OEM_CONFIG_MIB
    if size_mib < fixed + 1 + 8 + 1:
        raise BuildError(f"--size-mib {size_mib} is too small: need at least {fixed + 10} MiB "
                         f"for USR partitions of {usr_size_mib} MiB")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    disk_guid = derive_guid("disk", version, size_mib, usr_size_mib, epoch)
    root_bytes = (size_mib - fixed - 2) * MIB
    with tempfile.TemporaryDirectory(prefix="imagebuilder-", dir=output.parent) as tmp:
        t = Path(tmp)
        efi = make_vfat_image(t / "efi.img", EFI_MIB * MIB, label="EFI-SYSTEM", seed=disk_guid, epoch=epoch)
        usr = make_usr_image(rootfs, t / "usr.img", usr_size_mib * MIB, version=version, epoch=epoch)
        oem = make_ext_image(None, t / "oem.img", OEM_MIB * MIB, label="OEM", seed=disk_guid, epoch=epoch)
        root = make_ext_image(None, t / "root.img", root_bytes, label="ROOT", seed=disk_guid, epoch=epoch)
        parts = [
            PartSpec(1, "EFI-SYSTEM", gpt.TYPE_EFI_SYSTEM, EFI_MIB * MIB, efi),
            PartSpec(2, "BIOS-BOOT", gpt.TYPE_BIOS_BOOT, BIOS_MIB * MIB),
            PartSpec(3, "USR-A", gpt.TYPE_USR, usr_size_mib * MIB, usr, priority=1, tries=0, successful=True),
            PartSpec(4, "USR-B", gpt.TYPE_USR, usr_size_mib * MIB, None, priority=0, tries=0, successful=False),
            PartSpec(6, "OEM", gpt.TYPE_LINUX_DATA, OEM_MIB * MIB, oem),
            PartSpec(7, "OEM-CONFIG", gpt.TYPE_OEM_CONFIG, OEM_CONFIG_MIB * MIB),
            PartSpec(9, "ROOT", gpt.TYPE_ROOT, None, root),
        ]
        return assemble_disk(output, size_mib * MIB, parts, disk_guid=disk_guid)


def file_sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(MIB), b""):
            h.update(chunk)
    return h.hexdigest()


def build_payload(output: str | os.PathLike, version: str, *, rootfs: str | os.PathLike | None = None,
                  size_mib: int = DEFAULT_USR_MIB, epoch: int | None = None) -> dict:
    """An update payload: the USR filesystem image for ``version`` (``/share/coreos/release`` inside).

    ``size_mib`` is the filesystem size; it must not exceed the USR partitions of the disks it is
    installed on (``imagebuilder disk --usr-size-mib``, default 32), or agents refuse it.
    Returns ``{path, version, size, sha256}``.
    """
    if size_mib < 1:
        raise BuildError(f"--size-mib {size_mib} is too small: a payload needs at least 1 MiB")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    make_usr_image(rootfs, output, size_mib * MIB, version=version, label="USR", epoch=epoch)
    return {"path": str(output), "version": version, "size": output.stat().st_size,
            "sha256": file_sha256(output)}
