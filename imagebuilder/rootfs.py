"""The default root filesystem recipe: a Debian cloud kernel + busybox-static, fetched once.

Inputs (:func:`fetch_inputs`) come from the Debian archive with ``apt-get download`` and are
unpacked with ``dpkg-deb -x`` under ``var/cache/imagebuilder/`` (override with
``IMAGEBUILDER_CACHE``).  After the first fetch a build needs no network: the cache is used as is.

What the recipe makes:

* :func:`default_usr_tree` — the ``/usr`` tree written to USR-A (busybox and a ``bin/`` of applet
  links; :func:`imagebuilder.disk.make_usr_image` adds ``/share/coreos/release``).
* :func:`make_initramfs` — a gzip'd newc cpio written in Python (fixed uid/gid/mtime, sorted,
  gzip mtime 0: byte-identical for the same inputs, no root needed, device nodes included).  Its
  ``/init`` (:data:`INIT_SCRIPT`) loads the virtio/loop modules with ``insmod`` in dependency
  order, finds USR by its GPT partition label (``/sys/class/block/*/uevent`` ``PARTNAME=``),
  mounts it read-only and prints ``fleetweb-boot: version=V usr=LABEL mounted=ro`` on the console.
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
# dependencies are read from each module's .modinfo and loaded first.
BOOT_MODULES = ("virtio_pci", "virtio_blk", "loop")

INIT_SCRIPT = r"""#!/bin/busybox sh
# Fleetweb init: find USR by its GPT label, mount it read-only, print the boot banner.
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
if [ -f /usr.img ]; then
	say "found USR image /usr.img (PXE)"
	if mount -t ext4 -o loop,ro /usr.img /usr; then
		loopdev=$(awk '$2 == "/usr" { print $1 }' /proc/mounts)
		label=$(dd if="$loopdev" bs=1 skip=1144 count=16 2>/dev/null | tr -d '\000')
		dev="/usr.img via $loopdev, filesystem label $label"
	fi
else
	i=0
	while [ -z "$dev" ] && [ $i -lt 100 ]; do
		for want_label in $labels; do
			for ev in /sys/class/block/*/uevent; do
				if grep -qx "PARTNAME=$want_label" "$ev" 2>/dev/null; then
					name=$(sed -n 's/^DEVNAME=//p' "$ev")
					say "found USR by GPT label PARTNAME=$want_label at /dev/$name"
					if mount -t ext4 -o ro "/dev/$name" /usr; then dev=/dev/$name; label=$want_label; break 2; fi
				fi
			done
		done
		[ -n "$dev" ] || { i=$((i + 1)); sleep 0.1; }
	done
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
