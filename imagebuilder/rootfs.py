"""The default root filesystem recipe: a Debian cloud kernel + busybox-static, fetched once.

Inputs (:func:`fetch_inputs`) come from the Debian archive with ``apt-get download`` and are
unpacked with ``dpkg-deb -x`` under ``var/cache/imagebuilder/`` (override with
``IMAGEBUILDER_CACHE``).  After the first fetch a build needs no network: the cache is used as is.

What the recipe makes:

* :func:`fetch_efi_loader` / :func:`fetch_grub_bios` — systemd-boot (``systemd-boot-efi``) for
  the EFI-SYSTEM partition, GRUB (``grub-common`` + ``grub-pc-bin``) for BIOS boot, same cache.
* :func:`default_usr_tree` — the ``/usr`` tree written to USR-A (busybox and a ``bin/`` of applet
  links; :func:`imagebuilder.disk.make_usr_image` adds ``/share/coreos/release``).
* :func:`make_initramfs` — a gzip'd newc cpio written in Python (fixed uid/gid/mtime, sorted,
  gzip mtime 0: byte-identical for the same inputs, no root needed, device nodes included).  Its
  ``/init`` (:data:`INIT_SCRIPT`) loads the virtio/SCSI/loop modules with ``insmod`` in dependency
  order; without ``mount.usr=PARTLABEL=X`` on the command line it makes the gptprio choice
  itself (``/bin/gptprio``, :data:`GPTPRIO_SCRIPT`: reads the GPT with dd+od, busybox awk does
  the CRC32s, decrements the winner's tries in both copies); it finds that USR by its GPT
  partition label (``/sys/class/block/*/uevent`` ``PARTNAME=``; falls back to the labels in
  order when the choice fails or does not mount), mounts it read-only and prints ``fleetweb-boot: version=V usr=LABEL mounted=ro`` on the console.
  For PXE the initramfs also carries the USR image as ``/usr.img`` and mounts it through a loop
  device inside the guest.
"""
from __future__ import annotations

import gzip
import os
import re
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from imagebuilder.disk import BuildError, run_tool

KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX_PKG = "busybox-static"
# Modules the boot needs from the cloud kernel (ext4 and crc32c are built in there); their
# dependencies are read from each module's .modinfo and loaded first.  Required, because the
# artifacts declare these controllers: virtio-blk (qemu, openstack, ami/gce raw), virtio-scsi
# (GCE, and the VirtualBox/Vagrant controller), PVSCSI (the VMware controller); sd_mod gives the
# SCSI disks their block devices.  The cloud kernel has no ahci, mptspi or mptsas, so the
# VirtualBox and VMware artifacts must not declare SATA or LSI Logic controllers.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "virtio_scsi", "vmw_pvscsi", "sd_mod", "loop")
# Disk drivers of the other platforms, loaded when the kernel has them as modules: older EC2
# (Xen), Hyper-V.  NVMe (EC2 Nitro) is built in.
OPTIONAL_BOOT_MODULES = ("xen_blkfront", "hv_storvsc")
SYSTEMD_BOOT_PKG = "systemd-boot-efi"
SYSTEMD_BOOT_EFI = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
# The BIOS path: GRUB's i386-pc core.img in BIOS-BOOT, boot.img in the protective MBR.
GRUB_PKGS = ("grub-common", "grub-pc-bin")
GRUB_BIOS_MODULES = ("biosdisk", "part_gpt", "fat", "normal", "linux", "configfile", "search",
                     "search_label", "echo", "test", "serial", "terminal")

INIT_SCRIPT = r"""#!/bin/busybox sh
# Fleetweb init: choose USR (gptprio, or mount.usr=PARTLABEL=X), mount it read-only, print the banner.
/bin/busybox mkdir -p /proc /sys /dev /usr /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null
/bin/busybox --install -s /bin
export PATH=/bin
say() { echo "fleetweb-init: $*" > /dev/console; }
for m in $(cat /etc/modules); do
	insmod "/lib/modules/$m.ko" 2>/dev/null && say "loaded $m" || say "module $m not loaded"
done
want=""
for arg in $(cat /proc/cmdline); do
	case "$arg" in mount.usr=PARTLABEL=*) want="${arg#mount.usr=PARTLABEL=}" ;; esac
done
labels="${want:-USR-A USR-B}"
dev=""; label=""
# the block device name of the partition labelled $1 ("" until the kernel has it)
part_by_label() {
	for ev in /sys/class/block/*/uevent; do
		if grep -qx "PARTNAME=$1" "$ev" 2>/dev/null; then sed -n 's/^DEVNAME=//p' "$ev"; return; fi
	done
}
try_mount() {   # $1 = label, $2 = device name
	say "found USR by GPT label PARTNAME=$1 at /dev/$2"
	if mount -t ext4 -o ro "/dev/$2" /usr; then dev=/dev/$2; label=$1; return 0; fi
	say "USR $1 (/dev/$2) does not mount"; return 1
}
if [ -f /usr.img ]; then
	say "found USR image /usr.img (PXE)"
	if mount -t ext4 -o loop,ro /usr.img /usr; then
		loopdev=$(awk '$2 == "/usr" { print $1 }' /proc/mounts)
		label=$(dd if="$loopdev" bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000')
		dev="/usr.img via $loopdev, filesystem label $label"
	fi
else
	i=0; first=""   # wait up to 60 s for the disk (TCG guests on a busy host probe slowly)
	while [ -z "$first" ] && [ $i -lt 600 ]; do
		for l in $labels; do first=$(part_by_label "$l"); [ -n "$first" ] && break; done
		[ -n "$first" ] || { i=$((i + 1)); sleep 0.1; }
	done
	if [ -z "$want" ] && [ -n "$first" ]; then
		# no mount.usr=: the CoreOS gptprio choice on the disk holding USR (tries are decremented)
		disk=$(basename "$(cd -P "/sys/class/block/$first/.." && pwd -P)")
		GPTPRIO_SECTOR_SIZE=$(cat "/sys/block/$disk/queue/logical_block_size" 2>/dev/null || echo 512)
		export GPTPRIO_SECTOR_SIZE
		if choice=$(gptprio --commit "/dev/$disk" 2>/tmp/gptprio.err); then
			set -- $choice
			say "gptprio on /dev/$disk chose partition $1 ($2: priority=$3 tries=$4 successful=$5)"
			name=$(part_by_label "$2")
			[ -n "$name" ] && try_mount "$2" "$name"
		else
			say "gptprio on /dev/$disk: $(cat /tmp/gptprio.err); trying labels in order"
		fi
	fi
	if [ -z "$dev" ]; then
		for l in $labels; do
			[ "$l" = "$label" ] && continue
			name=$(part_by_label "$l")
			[ -n "$name" ] && try_mount "$l" "$name" && break
		done
	fi
fi
if [ -z "$dev" ]; then
	say "no USR partition found (labels: $labels)"
else
	mode=$(awk '$2 == "/usr" { split($4, o, ","); print o[1] }' /proc/mounts)
	say "mounted $dev on /usr ($mode)"
	ver=$(sed -n 's/^COREOS_RELEASE_VERSION=//p' /usr/share/coreos/release)
	echo "fleetweb-boot: version=$ver usr=$label mounted=$mode" > /dev/console
fi
exec setsid cttyhack sh
"""

# /bin/gptprio in the initramfs: the DESIGN section 4 boot choice read straight from the GPT
# (busybox has no GPT attribute reader).  Same rule and same bytes written as
# agent.disk.boot_choice; tested against it on the host with the cached busybox.
GPTPRIO_SCRIPT = r"""#!/bin/sh
# gptprio [--commit] DISK: the CoreOS gptprio boot choice (DESIGN 4) in busybox sh + awk.
# Among the USR partitions (type 5dfbf5f4-...) with priority > 0 and (tries > 0 or successful)
# the highest priority wins (ties: the lower number).  Prints "NUMBER LABEL PRIORITY TRIES
# SUCCESSFUL" of the winner as it was before the choice; exit 1: none is bootable, 2: no valid
# primary GPT.  --commit: when the winner has tries > 0, decrement them and rewrite both GPT
# copies (the attribute byte in both entry arrays, the entry-array CRC32 and both header CRC32s).
commit=0
[ "$1" = "--commit" ] && { commit=1; shift; }
disk="$1"
ss="${GPTPRIO_SECTOR_SIZE:-512}"
[ -n "$disk" ] || { echo "usage: gptprio [--commit] DISK" >&2; exit 64; }
sectors() { dd if="$disk" bs="$ss" skip="$1" count="$2" 2>/dev/null | od -An -v -tu1; }
put() { printf "$2" | dd of="$disk" bs=1 seek="$1" conv=notrunc 2>/dev/null; }
LIB='
function tbl(   n, c, k) { for (n = 0; n < 256; n++) { c = n; for (k = 0; k < 8; k++) c = and(c, 1) ? xor(3988292384, rshift(c, 1)) : rshift(c, 1); T[n] = c } }
function crc(a, from, len,   c, i) { c = 4294967295; for (i = from; i < from + len; i++) c = xor(T[and(xor(c, a[i]), 255)], rshift(c, 8)); return xor(c, 4294967295) }
function le(a, off, len,   v, i) { v = 0; for (i = len - 1; i >= 0; i--) v = v * 256 + a[off + i]; return v }
function setle(a, off, len, v,   i) { for (i = 0; i < len; i++) { a[off + i] = v % 256; v = int(v / 256) } }
{ for (i = 1; i <= NF; i++) b[nb++] = $i + 0 }
'
hdr=$(sectors 1 1 | awk "$LIB"'
END {
	tbl()
	if (b[0] != 69 || b[1] != 70 || b[2] != 73 || b[3] != 32 || b[4] != 80 || b[5] != 65 || b[6] != 82 || b[7] != 84) { print "bad"; exit }
	hs = le(b, 12, 4); want = le(b, 16, 4); for (i = 16; i < 20; i++) b[i] = 0
	if (hs < 92 || hs > 512 || crc(b, 0, hs) != want) { print "bad"; exit }
	print le(b, 32, 8), le(b, 72, 8), le(b, 80, 4), le(b, 84, 4), le(b, 88, 4)
}')
set -- $hdr
[ "$1" = "bad" ] || [ $# -ne 5 ] && { echo "gptprio: $disk: no valid primary GPT" >&2; exit 2; }
alt=$1 elba=$2 n=$3 esz=$4 ecrc=$5
esec=$(( (n * esz + ss - 1) / ss ))
pick=$(sectors "$elba" "$esec" | awk -v n="$n" -v esz="$esz" -v ecrc="$ecrc" "$LIB"'
END {
	tbl()
	if (crc(b, 0, n * esz) != ecrc) { print "bad"; exit }
	# USR type GUID 5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6, on disk (mixed endian)
	split("244 245 251 93 72 40 172 75 170 94 13 154 32 183 69 166", g, " ")
	best = -1
	for (e = 0; e < n; e++) {
		o = e * esz; usr = 1
		for (k = 0; k < 16; k++) if (b[o + k] != g[k + 1]) { usr = 0; break }
		if (!usr) continue
		p = and(b[o + 54], 15); t = rshift(b[o + 54], 4); s = and(b[o + 55], 1)
		if (p > 0 && (t > 0 || s) && (best < 0 || p > bp)) { best = e; bp = p; bt = t; bs = s }
	}
	if (best < 0) { print "none"; exit }
	o = best * esz; label = ""
	for (k = 56; k < 128 && k < esz; k += 2) { c = b[o + k] + 256 * b[o + k + 1]; if (c == 0) break; label = label sprintf("%c", c < 128 ? c : 63) }
	newb = b[o + 54]; newcrc = ecrc
	if (bt > 0) { newb = b[o + 54] - 16; b[o + 54] = newb; newcrc = crc(b, 0, n * esz) }
	print best + 1, label, bp, bt, bs, o + 54, newb, newcrc
}')
set -- $pick
case "$1" in
	bad) echo "gptprio: $disk: the primary GPT entry array fails its CRC" >&2; exit 2 ;;
	none|"") echo "gptprio: $disk: no bootable USR partition" >&2; exit 1 ;;
esac
echo "$1 $2 $3 $4 $5"
[ "$commit" = 1 ] && [ "$4" -gt 0 ] || exit 0
off=$6 newb=$7 newcrc=$8
oct() { printf '\\%03o' "$1"; }
for hlba in 1 "$alt"; do
	patch=$(sectors "$hlba" 1 | awk -v ecrc="$newcrc" "$LIB"'
	END {
		tbl(); hs = le(b, 12, 4)
		setle(b, 88, 4, ecrc); setle(b, 16, 4, 0); setle(b, 16, 4, crc(b, 0, hs))
		out = le(b, 72, 8) " "; for (i = 0; i < hs; i++) out = out sprintf("\\%03o", b[i]); print out
	}')
	set -- $patch
	put $(( $1 * ss + off )) "$(oct "$newb")"
	put $(( hlba * ss )) "$2"
done
sync
"""


@dataclass(frozen=True)
class Inputs:
    """The cached inputs of the default recipe."""
    kernel: Path              # vmlinuz
    modules: Path             # lib/modules/<kver>
    kernel_version: str
    busybox: Path             # a static busybox binary


def cache_dir() -> Path:
    env = os.environ.get("IMAGEBUILDER_CACHE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "var" / "cache" / "imagebuilder"


def _apt_download(pkg: str, dest: Path, log: Callable[[str], None]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    run_tool(["apt-get", "download", "-q", pkg], cwd=dest, log=log)
    debs = sorted(dest.glob(f"{pkg}_*.deb"))
    if not debs:
        raise BuildError(f"apt-get download {pkg} left no .deb in {dest}")
    return debs[-1]


def _unpack(deb: Path, dest: Path, log: Callable[[str], None]) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        subprocess.run(["rm", "-rf", str(tmp)], check=False)
    run_tool(["dpkg-deb", "-x", str(deb), str(tmp)], log=log)
    tmp.rename(dest)


def _kernel_package(log: Callable[[str], None]) -> str:
    for attempt in (1, 2):
        try:
            res = run_tool(["apt-cache", "depends", KERNEL_META], log=log)
        except BuildError:
            res = ""
        for line in res.splitlines():
            m = re.match(r"\s*Depends:\s*(linux-image-\S+-cloud-amd64)\s*$", line)
            if m:
                return m.group(1)
        if attempt == 1 and os.geteuid() == 0:
            log("package lists do not know the cloud kernel: apt-get update")
            run_tool(["apt-get", "update", "-qq"], log=log)
    raise BuildError(f"apt-cache depends {KERNEL_META} names no kernel: run apt-get update")


def fetch_inputs(log: Callable[[str], None] = lambda s: None, cache: Path | None = None) -> Inputs:
    """The kernel and busybox, from the cache or (once) from the Debian archive."""
    cache = cache or cache_dir()
    kroot = cache / "kernel"
    if not kroot.is_dir():
        pkg = _kernel_package(log)
        log(f"fetching {pkg} into {cache}")
        _unpack(_apt_download(pkg, cache / "debs", log), kroot, log)
    broot = cache / "busybox"
    if not broot.is_dir():
        log(f"fetching {BUSYBOX_PKG} into {cache}")
        _unpack(_apt_download(BUSYBOX_PKG, cache / "debs", log), broot, log)
    kernels = sorted((kroot / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError(f"no vmlinuz in {kroot}/boot: remove {kroot} to fetch it again")
    kver = kernels[-1].name[len("vmlinuz-"):]
    modules = kroot / "lib" / "modules" / kver
    busybox = broot / "bin" / "busybox"
    if not busybox.is_file():
        raise BuildError(f"no busybox in {broot}: remove {broot} to fetch it again")
    return Inputs(kernel=kernels[-1], modules=modules, kernel_version=kver, busybox=busybox)


def fetch_efi_loader(log: Callable[[str], None] = lambda s: None, cache: Path | None = None) -> Path:
    """systemd-boot's ``systemd-bootx64.efi`` (Debian ``systemd-boot-efi``), fetched once into the cache.

    Offline, with the package installed on this machine, its file is copied into the cache instead.
    """
    cache = cache or cache_dir()
    sroot = cache / "systemd-boot"
    if not sroot.is_dir():
        log(f"fetching {SYSTEMD_BOOT_PKG} into {cache}")
        try:
            _unpack(_apt_download(SYSTEMD_BOOT_PKG, cache / "debs", log), sroot, log)
        except BuildError:
            installed = Path("/") / SYSTEMD_BOOT_EFI
            if not installed.is_file():
                raise
            log(f"apt-get download failed: using the installed {installed}")
            tmp = sroot.with_name(sroot.name + ".tmp")
            (tmp / SYSTEMD_BOOT_EFI).parent.mkdir(parents=True, exist_ok=True)
            (tmp / SYSTEMD_BOOT_EFI).write_bytes(installed.read_bytes())
            tmp.rename(sroot)
    loader = sroot / SYSTEMD_BOOT_EFI
    if not loader.is_file():
        raise BuildError(f"no {SYSTEMD_BOOT_EFI} in {sroot}: remove {sroot} to fetch it again")
    return loader


@dataclass(frozen=True)
class GrubBios:
    mkimage: Path             # grub-mkimage (from the unpacked grub-common)
    moddir: Path              # usr/lib/grub/i386-pc (boot.img, modules)


def fetch_grub_bios(log: Callable[[str], None] = lambda s: None, cache: Path | None = None) -> GrubBios:
    """GRUB for BIOS boot (Debian ``grub-common`` + ``grub-pc-bin``), fetched once into the cache."""
    cache = cache or cache_dir()
    for pkg in GRUB_PKGS:
        dest = cache / pkg
        if not dest.is_dir():
            log(f"fetching {pkg} into {cache}")
            _unpack(_apt_download(pkg, cache / "debs", log), dest, log)
    grub = GrubBios(cache / "grub-common" / "usr" / "bin" / "grub-mkimage",
                    cache / "grub-pc-bin" / "usr" / "lib" / "grub" / "i386-pc")
    if not grub.mkimage.is_file() or not (grub.moddir / "boot.img").is_file():
        raise BuildError(f"no grub-mkimage or i386-pc/boot.img under {cache}: remove "
                         f"{cache}/grub-common and {cache}/grub-pc-bin to fetch them again")
    return grub


def optional_modules(modules_dir: Path, have: Iterable[str]) -> list[tuple[str, Path]]:
    """:data:`OPTIONAL_BOOT_MODULES` this kernel ships as modules (+ dependencies), minus ``have``."""
    present = {ko.stem.replace("-", "_") for ko in modules_dir.rglob("*.ko")}
    got = set(have)
    return [(n, p) for n, p in resolve_modules(modules_dir, [m for m in OPTIONAL_BOOT_MODULES if m in present])
            if n not in got]


# -- kernel modules ------------------------------------------------------------------------

def _modinfo_depends(ko: Path) -> list[str]:
    data = ko.read_bytes()
    m = re.search(rb"(?:^|\0)depends=([^\0]*)\0", data)
    if not m:
        return []
    return [d.decode() for d in m.group(1).split(b",") if d]


def resolve_modules(modules_dir: Path, wanted: Iterable[str]) -> list[tuple[str, Path]]:
    """``[(name, path)]`` of ``wanted`` and their dependencies, dependencies first."""
    index = {}
    for ko in modules_dir.rglob("*.ko"):
        index[ko.stem.replace("-", "_")] = ko
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        key = name.replace("-", "_")
        if key in seen:
            return
        if key in chain:
            raise BuildError(f"module dependency cycle: {' -> '.join(chain + (key,))}")
        ko = index.get(key)
        if ko is None:
            builtin = modules_dir / "modules.builtin"
            if builtin.exists() and re.search(rf"/{re.escape(key)}\.ko$", builtin.read_text().replace("-", "_"),
                                              re.M):
                seen.add(key)
                return
            raise BuildError(f"kernel module {name} is neither in {modules_dir} nor built in")
        for dep in _modinfo_depends(ko):
            visit(dep, chain + (key,))
        seen.add(key)
        order.append((key, ko))

    for name in wanted:
        visit(name, ())
    return order


# -- cpio (newc) ---------------------------------------------------------------------------

class CpioWriter:
    """A reproducible newc archive: every entry owned by 0:0 with one mtime, inode numbers in order."""

    def __init__(self, fh, mtime: int) -> None:
        self.fh = fh
        self.mtime = mtime
        self.ino = 0

    def _header(self, name: str, mode: int, size: int, nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        self.ino += 1
        raw = name.encode()
        fields = [self.ino, mode, 0, 0, nlink, self.mtime, size, 0, 0, rdev[0], rdev[1], len(raw) + 1, 0]
        hdr = b"070701" + b"".join(b"%08X" % f for f in fields) + raw + b"\0"
        self.fh.write(hdr + b"\0" * (-len(hdr) % 4))

    def _pad(self, size: int) -> None:
        self.fh.write(b"\0" * (-size % 4))

    def dir(self, name: str, mode: int = 0o755) -> None:
        self._header(name, stat.S_IFDIR | mode, 0, nlink=2)

    def symlink(self, name: str, target: str) -> None:
        data = target.encode()
        self._header(name, stat.S_IFLNK | 0o777, len(data))
        self.fh.write(data)
        self._pad(len(data))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._header(name, stat.S_IFCHR | mode, 0, rdev=(major, minor))

    def bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._header(name, stat.S_IFREG | mode, len(data))
        self.fh.write(data)
        self._pad(len(data))

    def file(self, name: str, path: Path, mode: int = 0o644) -> None:
        size = path.stat().st_size
        self._header(name, stat.S_IFREG | mode, size)
        with open(path, "rb") as src:
            for chunk in iter(lambda: src.read(1 << 20), b""):
                self.fh.write(chunk)
        self._pad(size)

    def tree(self, prefix: str, root: Path) -> None:
        """Add a host directory under ``prefix`` (sorted; modes kept, owners and times not)."""
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            base = prefix if rel == "." else f"{prefix}/{rel}"
            for name in sorted(dirnames + filenames):
                full = Path(dirpath) / name
                st = full.lstat()
                arc = f"{base}/{name}"
                if stat.S_ISLNK(st.st_mode):
                    self.symlink(arc, os.readlink(full))
                elif stat.S_ISDIR(st.st_mode):
                    self.dir(arc, stat.S_IMODE(st.st_mode))
                elif stat.S_ISREG(st.st_mode):
                    self.file(arc, full, stat.S_IMODE(st.st_mode))

    def close(self) -> None:
        self._header("TRAILER!!!", 0, 0, nlink=1)
        # pad the archive to a 512-byte boundary like cpio(1) does
        pos = self.fh.tell() if hasattr(self.fh, "tell") else 0
        self.fh.write(b"\0" * (-pos % 512))


def make_initramfs(output: Path, *, busybox: Path, modules: list[tuple[str, Path]], epoch: int,
                   usr_image: Path | None = None, extra_tree: Path | None = None,
                   compresslevel: int = 6) -> Path:
    """The gzip'd initramfs: busybox, /init, the boot modules (+ ``/usr.img`` for PXE)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                                                  compresslevel=compresslevel) as gz:
        w = CpioWriter(gz, epoch)
        for d in ("bin", "dev", "etc", "lib", "lib/modules", "proc", "sys", "tmp", "usr"):
            w.dir(d)
        w.chardev("dev/console", 5, 1)
        w.chardev("dev/null", 1, 3, 0o666)
        w.file("bin/busybox", busybox, 0o755)
        w.symlink("bin/sh", "busybox")
        w.bytes("init", INIT_SCRIPT.encode(), 0o755)
        w.bytes("bin/gptprio", GPTPRIO_SCRIPT.encode(), 0o755)
        w.bytes("etc/modules", "".join(f"{name}\n" for name, _ in modules).encode())
        for name, ko in modules:
            w.file(f"lib/modules/{name}.ko", ko)
        if extra_tree is not None:
            w.tree("", extra_tree)
        if usr_image is not None:
            w.file("usr.img", usr_image)
        w.close()
    return output


def default_usr_tree(dest: Path, inputs: Inputs) -> Path:
    """A minimal ``/usr``: busybox in ``bin/`` (the release file is added by make_usr_image)."""
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    (dest / "lib" / "fleetweb").mkdir(parents=True, exist_ok=True)
    target = dest / "bin" / "busybox"
    target.write_bytes(inputs.busybox.read_bytes())
    target.chmod(0o755)
    for applet in ("sh", "ls", "cat", "mount", "uname"):
        os.symlink("busybox", dest / "bin" / applet)
    (dest / "lib" / "fleetweb" / "kernel-version").write_text(inputs.kernel_version + "\n")
    return dest
