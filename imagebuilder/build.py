"""One build: a USR image, a GPT disk, and the platform artifacts wrapped around it.

The Python API the server's Celery pipeline calls (and ``imagebuilder build`` uses)::

    from imagebuilder.build import (PLATFORMS, BuildContext, Prepared, Artifact, ToolError,
                                    Cancelled, prepare, build_platform, write_sums)

    ctx = BuildContext(workdir=Path("/media/builds/42"), version="3.1.0", channel="alpha",
                       rootfs=None, kernel=None, initrd=None, source_date_epoch=1704067200,
                       log=print, cancelled=lambda: False)
    prepared = prepare(ctx)                         # once, first
    artifacts = [prepared.payload_artifact()]       # the update payload (USR image)
    for platform in PLATFORMS:                      # independent: run them as parallel tasks
        artifacts += build_platform(ctx, prepared, platform)
    artifacts += write_sums(ctx, artifacts, sign=lambda data: signing.sign_bytes(key, data))

* :class:`BuildContext` — what to build and where.  ``rootfs`` is a directory or a tarball
  (its ``usr/`` goes to USR when it has one, else the whole tree does); ``None`` uses the
  default recipe (:mod:`imagebuilder.rootfs`: Debian cloud kernel + busybox, cached under
  ``var/cache/imagebuilder``).  ``kernel``/``initrd`` replace the recipe's kernel and
  initramfs.  ``log`` gets one line per step and the command line of every tool run (stream
  it); ``cancelled`` is polled between steps and while a tool runs (a cancelled build raises
  :class:`Cancelled`, the tool is killed).
* :func:`prepare` — the USR image (``/share/coreos/release`` inside), the update payload
  ``fleetweb_production_update.bin`` (the USR image with label ``USR``; sign it as a release:
  ``agent.signing.sign(key, version, size, sha256)``), the EFI-SYSTEM vfat (systemd-boot as
  ``EFI/BOOT/BOOTX64.EFI``, kernel, initramfs, ``loader/loader.conf``, ``loader/entries/``
  ``fleetweb.conf`` (default: the initramfs makes the gptprio choice), ``usr-a.conf`` and
  ``usr-b.conf`` (forced), and ``EFI/fleetweb/grub.cfg``), GRUB for BIOS boot (``core.img``
  in BIOS-BOOT, ``boot.img`` in the protective MBR; it reads that ``grub.cfg``; skipped with a
  log line when ``grub-common``/``grub-pc-bin`` cannot be fetched), an OEM partition with the
  placeholder platform id ``generic``, the ext4 ROOT and the GPT ``disk.raw`` (USR-A populated
  and prioritized, USR-B empty).  Returns a :class:`Prepared`; it is also saved as
  ``<workdir>/_work/prepared.json`` so another process can pick it up with
  :meth:`Prepared.load` (Celery tasks pass the build id, not objects).
* :func:`build_platform` — one platform's artifacts (names below); each platform copies the
  raw disk (sparse) and rewrites only its OEM partition, which carries ``/oem-release``
  (``ID=<platform>``), ``/platform`` and ``/grub.cfg`` (``set oem_id=<platform>``).  Safe to
  run for different platforms at the same time; running one twice rewrites its files.
* :func:`write_sums` — ``SHA256SUMS`` (``<sha256>  <name>`` lines, sorted by name) and, when
  ``sign`` is given, ``SHA256SUMS.sig``: ``sign(bytes_of_SHA256SUMS)`` → base64 Ed25519
  signature over the file's exact bytes (:func:`agent.signing.sign_bytes` /
  :func:`agent.signing.verify_bytes`).
* :class:`ToolError` (``tool``, ``returncode``, ``stderr``, ``cmd``) — a failing tool; its
  stderr is kept whole for the build page.  Both it and :class:`Cancelled` are
  :class:`imagebuilder.disk.BuildError`.

Artifacts (``fleetweb_production_`` prefix, all in ``workdir``):

==========  ===========================================================================
pxe         ``pxe.vmlinuz``, ``pxe_image.cpio.gz`` (initramfs carrying ``/usr.img``)
ami         ``ami_image.bin`` (raw), ``ami_vmdk_image.vmdk`` (streamOptimized)
gce         ``gce.tar.gz`` (one sparse ``disk.raw``, ``tar --format=oldgnu -S``)
openstack   ``openstack_image.qcow2``
virtualbox  ``virtualbox_image.vmdk`` (streamOptimized), ``virtualbox.ovf``, ``virtualbox.ova``
vmware      ``vmware_image.vmdk`` (monolithicSparse), ``vmware.vmx``, ``vmware.ova``
vagrant     ``vagrant.box`` (tar.gz: ``metadata.json``, ``Vagrantfile``, ``box.ovf``,
            ``box-disk1.vmdk``; virtualbox provider)
qemu        ``qemu_image.qcow2``, ``qemu.sh`` (launch script: boots the disk through UEFI
            firmware when OVMF is installed, else the kernel with ``-kernel``/``-initrd``),
            ``qemu.vmlinuz`` and ``qemu_initrd.cpio.gz`` (for that fallback)
==========  ===========================================================================

Reproducible: the same inputs and ``source_date_epoch`` give byte-identical artifacts (derived
GUIDs/UUIDs, fixed mtimes/owners in filesystems and archives, gzip mtime 0, the random vmdk
``CID`` replaced by a derived one).
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from agent import disk as gpt
from imagebuilder import disk, formats, rootfs
from imagebuilder.disk import MIB, BuildError, Cancelled, ToolError, tool_hooks

__all__ = ["PLATFORMS", "BuildContext", "Prepared", "Artifact", "ToolError", "Cancelled", "BuildError",
           "prepare", "build_platform", "write_sums"]

PLATFORMS = ("pxe", "ami", "gce", "openstack", "virtualbox", "vmware", "vagrant", "qemu")
PREFIX = "fleetweb_production"
WORK = "_work"
PLACEHOLDER_PLATFORM = "generic"
KERNEL_CMDLINE = "console=tty0 console=ttyS0,115200n8 mount.usr=PARTLABEL=USR-A"
# What the disk's boot entries and the qemu script pass: no mount.usr=, so the initramfs runs the
# gptprio choice (KERNEL_CMDLINE forces USR-A).
BOOT_CMDLINE = "console=tty0 console=ttyS0,115200n8"
GRUB_PREFIX = "(hd0,gpt1)/EFI/fleetweb"      # BIOS GRUB reads EFI-SYSTEM's EFI/fleetweb/grub.cfg
ROOT_MIB = 16


def _noop_log(line: str) -> None:
    pass


@dataclass
class BuildContext:
    workdir: Path
    version: str
    channel: str = "alpha"
    rootfs: Path | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    source_date_epoch: int = field(default_factory=disk.source_date_epoch)
    log: Callable[[str], None] = _noop_log
    cancelled: Callable[[], bool] = lambda: False
    usr_size_mib: int | None = None          # None: sized from the rootfs
    root_size_mib: int = ROOT_MIB

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        for name in ("rootfs", "kernel", "initrd"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))

    @property
    def work(self) -> Path:
        return self.workdir / WORK

    def check(self) -> None:
        if self.cancelled():
            raise Cancelled("build cancelled")

    def step(self, message: str) -> None:
        self.check()
        self.log(f"== {message}")


@dataclass
class Artifact:
    platform: str
    name: str
    path: Path
    size: int
    sha256: str

    @classmethod
    def of(cls, platform: str, path: Path) -> Artifact:
        return cls(platform, path.name, path, path.stat().st_size, disk.file_sha256(path))

    def to_dict(self) -> dict:
        return {"platform": self.platform, "name": self.name, "path": str(self.path), "size": self.size,
                "sha256": self.sha256}


@dataclass
class Prepared:
    workdir: Path
    version: str
    channel: str
    epoch: int
    disk: Path                    # the GPT disk (OEM = placeholder)
    usr_image: Path               # USR-A's filesystem
    payload: Path                 # the update payload (label USR)
    kernel: Path
    initrd: Path                  # the boot initramfs (no USR inside)
    disk_guid: str
    oem_offset: int
    oem_size: int
    busybox: Path | None = None   # default recipe only: to build the PXE initramfs
    modules: list[tuple[str, str]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def save(self) -> Path:
        data = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
        out = Path(self.workdir) / WORK / "prepared.json"
        out.write_text(json.dumps(data, indent=1, sort_keys=True))
        return out

    @classmethod
    def load(cls, workdir: Path) -> Prepared:
        data = json.loads((Path(workdir) / WORK / "prepared.json").read_text())
        for k in ("workdir", "disk", "usr_image", "payload", "kernel", "initrd", "busybox"):
            if data.get(k) is not None:
                data[k] = Path(data[k])
        data["modules"] = [tuple(m) for m in data.get("modules", [])]
        return cls(**data)

    def payload_artifact(self) -> Artifact:
        return Artifact.of("payload", self.payload)


def artifact_path(ctx: BuildContext, suffix: str) -> Path:
    return ctx.workdir / f"{PREFIX}_{suffix}"


# -- prepare ---------------------------------------------------------------------------------

def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        total += 4096 * (len(dirnames) + 1)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                total += -(-os.path.getsize(p) // 4096) * 4096
    return total


def _rootfs_tree(ctx: BuildContext, inputs: rootfs.Inputs | None) -> Path:
    """The /usr tree to put on USR: from --rootfs (dir or tar), or the default recipe."""
    if ctx.rootfs is None:
        ctx.step("default rootfs recipe: busybox /usr tree")
        return rootfs.default_usr_tree(ctx.work / "usr-tree", inputs)
    src = ctx.rootfs
    if src.is_file():
        ctx.step(f"unpacking rootfs tarball {src}")
        dest = ctx.work / "rootfs"
        with tarfile.open(src) as tar:
            tar.extractall(dest, filter="tar")
        src = dest
    elif not src.is_dir():
        raise BuildError(f"--rootfs {src}: neither a directory nor a tarball")
    return src / "usr" if (src / "usr").is_dir() else src


def _entry(title: str, options: str) -> str:
    return f"title {title}\nlinux /vmlinuz\ninitrd /initrd.img\noptions {options}\n"


def _boot_files(ctx: BuildContext, kernel: Path, initrd: Path, loader: Path | None = None) -> Path:
    """The EFI-SYSTEM tree: systemd-boot as the removable-media loader, its entries, kernel, initramfs.

    ``fleetweb.conf`` (default) boots without ``mount.usr=``: the initramfs makes the gptprio
    choice itself from the GPT (:data:`imagebuilder.rootfs.GPTPRIO_SCRIPT`); ``usr-a.conf`` and
    ``usr-b.conf`` force one USR partition (pick them in the menu: hold a key while it starts).
    """
    efi = ctx.work / "efi-tree"
    if efi.exists():
        shutil.rmtree(efi)
    (efi / "loader" / "entries").mkdir(parents=True)
    (efi / "EFI" / "fleetweb").mkdir(parents=True)
    shutil.copyfile(kernel, efi / "vmlinuz")
    shutil.copyfile(initrd, efi / "initrd.img")
    if loader is not None:
        (efi / "EFI" / "BOOT").mkdir(parents=True)
        shutil.copyfile(loader, efi / "EFI" / "BOOT" / "BOOTX64.EFI")
    (efi / "loader" / "loader.conf").write_text("default fleetweb.conf\ntimeout 0\neditor no\n")
    title = f"Fleetweb {ctx.version} ({ctx.channel})"
    entries = efi / "loader" / "entries"
    (entries / "fleetweb.conf").write_text(_entry(title, BOOT_CMDLINE))
    for label in gpt.USR_LABELS:
        (entries / f"{label.lower()}.conf").write_text(
            _entry(f"{title}, {label} forced", f"{BOOT_CMDLINE} mount.usr=PARTLABEL={label}"))
    (efi / "EFI" / "fleetweb" / "grub.cfg").write_text(
        "set timeout=1\nsearch --no-floppy --set=root --label EFI-SYSTEM\n"
        f"menuentry '{title}' {{\n"
        f"  linux /vmlinuz {BOOT_CMDLINE}\n  initrd /initrd.img\n}}\n")
    return efi


def oem_tree(dest: Path, platform: str, version: str) -> Path:
    """The OEM partition's files: ``oem-release`` (ID=platform), ``platform``, ``grub.cfg``."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / "oem-release").write_text(
        f"ID={platform}\nVERSION_ID={version}\nNAME=\"Fleetweb OEM ({platform})\"\n")
    (dest / "platform").write_text(platform + "\n")
    (dest / "grub.cfg").write_text(f'set oem_id="{platform}"\n')
    return dest


def prepare(ctx: BuildContext) -> Prepared:
    """USR image, payload, EFI, OEM (placeholder), ROOT and the GPT ``disk.raw``."""
    with tool_hooks(ctx.log, ctx.cancelled):
        return _prepare(ctx)


def _prepare(ctx: BuildContext) -> Prepared:
    t0 = time.monotonic()
    timings: dict[str, float] = {}
    epoch = ctx.source_date_epoch
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    if ctx.work.exists():
        shutil.rmtree(ctx.work)
    ctx.work.mkdir(parents=True)
    inputs = None
    if ctx.rootfs is None or ctx.kernel is None or ctx.initrd is None:
        ctx.step("default recipe inputs (kernel, busybox)")
        inputs = rootfs.fetch_inputs(ctx.log)
    kernel = ctx.kernel or inputs.kernel
    usr_tree = _rootfs_tree(ctx, inputs)
    timings["inputs"] = time.monotonic() - t0

    # USR
    t = time.monotonic()
    usr_mib = ctx.usr_size_mib or max(16, -(-_tree_bytes(usr_tree) * 6 // 5 // MIB) + 8)
    usr_mib += usr_mib % 2
    ctx.step(f"USR image ({usr_mib} MiB, version {ctx.version})")
    usr = disk.make_usr_image(usr_tree, ctx.work / "usr.img", usr_mib * MIB, version=ctx.version,
                              label="USR-A", epoch=epoch)
    ctx.step("update payload (USR image, label USR)")
    payload = disk.make_usr_image(usr_tree, artifact_path(ctx, "update.bin"), usr_mib * MIB,
                                  version=ctx.version, label="USR", epoch=epoch)
    timings["usr"] = time.monotonic() - t

    # initramfs
    t = time.monotonic()
    modules: list[tuple[str, Path]] = []
    if ctx.initrd is not None:
        initrd = ctx.initrd
    else:
        ctx.step("initramfs (busybox init, boot modules)")
        if ctx.kernel is None:
            modules = rootfs.resolve_modules(inputs.modules, rootfs.BOOT_MODULES)
            modules += rootfs.optional_modules(inputs.modules, [n for n, _ in modules])
            ctx.log("modules: " + " ".join(name for name, _ in modules))
        else:
            ctx.log("custom kernel without --initrd: the initramfs carries no modules")
        initrd = rootfs.make_initramfs(ctx.work / "initrd.cpio.gz", busybox=inputs.busybox, modules=modules,
                                       epoch=epoch)
    timings["initramfs"] = time.monotonic() - t

    # EFI, OEM, ROOT, disk
    t = time.monotonic()
    disk_guid = disk.derive_guid("disk", ctx.version, usr_mib, epoch)
    ctx.step("UEFI loader (systemd-boot)")
    loader = rootfs.fetch_efi_loader(ctx.log)
    efi_files = _boot_files(ctx, kernel, initrd, loader)
    efi_mib = max(disk.EFI_MIB, -(-_tree_bytes(efi_files) * 11 // 10 // MIB) + 4)
    ctx.step(f"EFI-SYSTEM vfat ({efi_mib} MiB: systemd-boot, kernel, initramfs, boot entries)")
    efi = disk.make_vfat_image(ctx.work / "efi.img", efi_mib * MIB, label="EFI-SYSTEM", seed=disk_guid,
                               files_dir=efi_files, epoch=epoch)
    ctx.step(f"OEM ext4 (platform id placeholder {PLACEHOLDER_PLATFORM!r})")
    oem = disk.make_ext_image(oem_tree(ctx.work / "oem-tree", PLACEHOLDER_PLATFORM, ctx.version),
                              ctx.work / "oem.img", disk.OEM_MIB * MIB, label="OEM",
                              seed=f"{disk_guid}|{PLACEHOLDER_PLATFORM}", epoch=epoch)
    ctx.step(f"ROOT ext4 ({ctx.root_size_mib} MiB)")
    root = disk.make_ext_image(None, ctx.work / "root.img", ctx.root_size_mib * MIB, label="ROOT",
                               seed=disk_guid, epoch=epoch)
    sizes = [efi_mib, disk.BIOS_MIB, usr_mib, usr_mib, disk.OEM_MIB, disk.OEM_CONFIG_MIB, ctx.root_size_mib]
    total = (sum(sizes) + 2) * MIB
    ctx.step(f"GPT disk.raw ({total // MIB} MiB)")
    parts = [
        disk.PartSpec(1, "EFI-SYSTEM", gpt.TYPE_EFI_SYSTEM, efi_mib * MIB, efi),
        disk.PartSpec(2, "BIOS-BOOT", gpt.TYPE_BIOS_BOOT, disk.BIOS_MIB * MIB),
        disk.PartSpec(3, "USR-A", gpt.TYPE_USR, usr_mib * MIB, usr, priority=1, tries=0, successful=True),
        disk.PartSpec(4, "USR-B", gpt.TYPE_USR, usr_mib * MIB, None, priority=0, tries=0, successful=False),
        disk.PartSpec(6, "OEM", gpt.TYPE_LINUX_DATA, disk.OEM_MIB * MIB, oem),
        disk.PartSpec(7, "OEM-CONFIG", gpt.TYPE_OEM_CONFIG, disk.OEM_CONFIG_MIB * MIB),
        disk.PartSpec(9, "ROOT", gpt.TYPE_ROOT, None, root),
    ]
    raw = ctx.work / "disk.raw"
    table = disk.assemble_disk(raw, total, parts, disk_guid=disk_guid)
    ctx.step("BIOS boot: GRUB core.img in BIOS-BOOT, boot.img in the MBR")
    try:
        grub = rootfs.fetch_grub_bios(ctx.log)
    except BuildError as exc:     # optional: the UEFI path does not need it
        ctx.log(f"no BIOS boot loader ({exc}); the disk boots through UEFI only")
    else:
        size = disk.install_bios_boot(raw, table, mkimage=grub.mkimage, moddir=grub.moddir,
                                      modules=rootfs.GRUB_BIOS_MODULES, prefix=GRUB_PREFIX, work=ctx.work)
        ctx.log(f"GRUB core.img: {size} bytes")
    oem_part = table.get("OEM")
    timings["disk"] = time.monotonic() - t
    prepared = Prepared(workdir=ctx.workdir, version=ctx.version, channel=ctx.channel, epoch=epoch, disk=raw,
                        usr_image=usr, payload=payload, kernel=kernel, initrd=initrd, disk_guid=disk_guid,
                        oem_offset=oem_part.offset(table.sector_size), oem_size=oem_part.size(table.sector_size),
                        busybox=inputs.busybox if inputs else None,
                        modules=[(n, str(p)) for n, p in modules], timings=timings)
    prepared.save()
    ctx.log(f"prepared in {time.monotonic() - t0:.1f}s: {raw.name}, payload {payload.name}")
    return prepared


# -- platforms -------------------------------------------------------------------------------

def sparse_copy(src: Path, dst: Path) -> None:
    """Copy a sparse file keeping its holes (SEEK_DATA/SEEK_HOLE)."""
    size = src.stat().st_size
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        fo.truncate(size)
        fdi, fdo = fi.fileno(), fo.fileno()
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fdi, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fdi, start, os.SEEK_HOLE)
            while start < end:
                chunk = os.pread(fdi, min(MIB * 4, end - start), start)
                os.pwrite(fdo, chunk, start)
                start += len(chunk)
            pos = end


def platform_disk(ctx: BuildContext, prepared: Prepared, platform: str, out: Path) -> Path:
    """A copy of the raw disk whose OEM partition carries ``platform``."""
    ctx.step(f"{platform}: disk variant (OEM ID={platform})")
    tmp = ctx.work / platform
    tmp.mkdir(parents=True, exist_ok=True)
    sparse_copy(prepared.disk, out)
    oem = disk.make_ext_image(oem_tree(tmp / "oem-tree", platform, prepared.version), tmp / "oem.img",
                              prepared.oem_size, label="OEM", seed=f"{prepared.disk_guid}|{platform}",
                              epoch=prepared.epoch)
    zero = bytes(MIB)
    with open(oem, "rb") as src, open(out, "r+b") as dst:
        fd = dst.fileno()
        pos = 0
        for chunk in iter(lambda: src.read(MIB), b""):
            off = prepared.oem_offset + pos
            if chunk != zero[:len(chunk)] or os.pread(fd, len(chunk), off) != zero[:len(chunk)]:
                os.pwrite(fd, chunk, off)
            pos += len(chunk)
    return out


def build_platform(ctx: BuildContext, prepared: Prepared, platform: str) -> list[Artifact]:
    """The artifacts of one platform (see the module docstring for names)."""
    if platform not in PLATFORMS:
        raise BuildError(f"unknown platform {platform!r}: choose from {', '.join(PLATFORMS)}")
    with tool_hooks(ctx.log, ctx.cancelled):
        t = time.monotonic()
        paths = _BUILDERS[platform](ctx, prepared)
        ctx.check()
        arts = [Artifact.of(platform, p) for p in paths]
        shutil.rmtree(ctx.work / platform, ignore_errors=True)
        ctx.log(f"{platform}: {len(arts)} artifacts in {time.monotonic() - t:.1f}s")
        return arts


def _pxe(ctx: BuildContext, p: Prepared) -> list[Path]:
    vmlinuz = artifact_path(ctx, "pxe.vmlinuz")
    shutil.copyfile(p.kernel, vmlinuz)
    initrd = artifact_path(ctx, "pxe_image.cpio.gz")
    ctx.step("pxe: initramfs carrying the USR image")
    if p.busybox is not None and p.initrd == p.workdir / WORK / "initrd.cpio.gz":
        rootfs.make_initramfs(initrd, busybox=p.busybox, modules=[(n, Path(f)) for n, f in p.modules],
                              epoch=p.epoch, usr_image=p.usr_image)
    else:
        # a given initramfs: append a second cpio with /usr.img (the kernel unpacks both)
        extra = ctx.work / "pxe-usr.cpio.gz"
        formats.cpio_with_file(extra, "usr.img", p.usr_image, p.epoch)
        with open(initrd, "wb") as out:
            for part in (p.initrd, extra):
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, MIB)
    return [vmlinuz, initrd]


def _ami(ctx: BuildContext, p: Prepared) -> list[Path]:
    raw = platform_disk(ctx, p, "ami", artifact_path(ctx, "ami_image.bin"))
    vmdk = formats.vmdk(raw, artifact_path(ctx, "ami_vmdk_image.vmdk"), "streamOptimized", seed=p.disk_guid)
    return [raw, vmdk]


def _gce(ctx: BuildContext, p: Prepared) -> list[Path]:
    d = ctx.work / "gce"
    d.mkdir(parents=True, exist_ok=True)
    raw = platform_disk(ctx, p, "gce", d / "disk.raw")
    out = artifact_path(ctx, "gce.tar.gz")
    formats.tar(out, d, ["disk.raw"], epoch=p.epoch, gzip_it=True, sparse=True)
    raw.unlink()
    return [out]


def _openstack(ctx: BuildContext, p: Prepared) -> list[Path]:
    raw = platform_disk(ctx, p, "openstack", ctx.work / "openstack" / "disk.raw")
    out = formats.qcow2(raw, artifact_path(ctx, "openstack_image.qcow2"))
    raw.unlink()
    return [out]


def _virtualbox(ctx: BuildContext, p: Prepared) -> list[Path]:
    raw = platform_disk(ctx, p, "virtualbox", ctx.work / "virtualbox" / "disk.raw")
    vmdk = formats.vmdk(raw, artifact_path(ctx, "virtualbox_image.vmdk"), "streamOptimized", seed=p.disk_guid)
    ovf = artifact_path(ctx, "virtualbox.ovf")
    ovf.write_text(formats.ovf(f"fleetweb-{p.version}", vmdk, raw.stat().st_size, flavor="virtualbox"))
    ova = artifact_path(ctx, "virtualbox.ova")
    _ova(ctx, p, ova, ovf, vmdk, "virtualbox")
    raw.unlink()
    return [vmdk, ovf, ova]


def _ova(ctx: BuildContext, p: Prepared, ova: Path, ovf: Path, vmdk: Path, flavor: str) -> None:
    """An OVA: the .ovf first, then the disk, then a .mf manifest (OVF 1.0 §5.3)."""
    d = ctx.work / f"{flavor}-ova"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    stem = ova.stem
    shutil.copyfile(ovf, d / f"{stem}.ovf")
    os.link(vmdk, d / vmdk.name)
    mf = "".join(f"SHA256({n})= {disk.file_sha256(d / n)}\n" for n in (f"{stem}.ovf", vmdk.name))
    (d / f"{stem}.mf").write_text(mf)
    ctx.step(f"{flavor}: ova (ovf first)")
    formats.tar(ova, d, [f"{stem}.ovf", vmdk.name, f"{stem}.mf"], epoch=p.epoch, fmt="ustar")


def _vmware(ctx: BuildContext, p: Prepared) -> list[Path]:
    raw = platform_disk(ctx, p, "vmware", ctx.work / "vmware" / "disk.raw")
    vmdk = formats.vmdk(raw, artifact_path(ctx, "vmware_image.vmdk"), "monolithicSparse", seed=p.disk_guid,
                        adapter="lsilogic")
    vmx = artifact_path(ctx, "vmware.vmx")
    vmx.write_text(formats.vmx(f"fleetweb-{p.version}", vmdk.name))
    stream = formats.vmdk(raw, ctx.work / "vmware-ova-src" / f"{PREFIX}_vmware_disk1.vmdk", "streamOptimized",
                          seed=p.disk_guid, adapter="lsilogic")
    ovf = ctx.work / "vmware-ova-src" / f"{PREFIX}_vmware.ovf"
    ovf.write_text(formats.ovf(f"fleetweb-{p.version}", stream, raw.stat().st_size, flavor="vmware"))
    ova = artifact_path(ctx, "vmware.ova")
    _ova(ctx, p, ova, ovf, stream, "vmware")
    raw.unlink()
    return [vmdk, vmx, ova]


def _vagrant(ctx: BuildContext, p: Prepared) -> list[Path]:
    raw = platform_disk(ctx, p, "vagrant", ctx.work / "vagrant" / "disk.raw")
    d = ctx.work / "vagrant-box"
    d.mkdir(parents=True, exist_ok=True)
    vmdk = formats.vmdk(raw, d / "box-disk1.vmdk", "streamOptimized", seed=p.disk_guid)
    (d / "box.ovf").write_text(formats.ovf(f"fleetweb-{p.version}", vmdk, raw.stat().st_size, flavor="virtualbox"))
    (d / "metadata.json").write_text(json.dumps({"provider": "virtualbox", "format": "ovf",
                                                 "version": p.version, "channel": p.channel}, sort_keys=True) + "\n")
    (d / "Vagrantfile").write_text(formats.vagrantfile())
    out = artifact_path(ctx, "vagrant.box")
    ctx.step("vagrant: box")
    formats.tar(out, d, ["metadata.json", "Vagrantfile", "box.ovf", "box-disk1.vmdk"], epoch=p.epoch, gzip_it=True)
    raw.unlink()
    return [out]


def _qemu(ctx: BuildContext, p: Prepared) -> list[Path]:
    raw = platform_disk(ctx, p, "qemu", ctx.work / "qemu" / "disk.raw")
    img = formats.qcow2(raw, artifact_path(ctx, "qemu_image.qcow2"))
    raw.unlink()
    kernel = artifact_path(ctx, "qemu.vmlinuz")
    shutil.copyfile(p.kernel, kernel)
    initrd = artifact_path(ctx, "qemu_initrd.cpio.gz")
    shutil.copyfile(p.initrd, initrd)
    script = artifact_path(ctx, "qemu.sh")
    script.write_text(formats.qemu_script(img.name, kernel.name, initrd.name, BOOT_CMDLINE))
    script.chmod(0o755)
    return [img, script, kernel, initrd]


_BUILDERS = {"pxe": _pxe, "ami": _ami, "gce": _gce, "openstack": _openstack, "virtualbox": _virtualbox,
             "vmware": _vmware, "vagrant": _vagrant, "qemu": _qemu}


# -- sums ------------------------------------------------------------------------------------

def write_sums(ctx: BuildContext, artifacts: list[Artifact],
               sign: Callable[[bytes], str] | None = None) -> list[Artifact]:
    """``SHA256SUMS`` over ``artifacts`` (+ ``SHA256SUMS.sig`` = ``sign(bytes)`` when given)."""
    ctx.step("SHA256SUMS")
    names = {}
    for a in artifacts:
        if names.setdefault(a.name, a.sha256) != a.sha256:
            raise BuildError(f"two different artifacts are named {a.name}")
    text = "".join(f"{sha}  {name}\n" for name, sha in sorted(names.items()))
    sums = ctx.workdir / "SHA256SUMS"
    sums.write_text(text)
    out = [Artifact.of("sums", sums)]
    if sign is not None:
        ctx.step("SHA256SUMS.sig")
        sig = ctx.workdir / "SHA256SUMS.sig"
        sig.write_text(sign(text.encode()).strip() + "\n")
        out.append(Artifact.of("sums", sig))
    return out

