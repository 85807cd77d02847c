"""Image build benchmark: a full 8-platform build vs the raw tool steps alone, and growth with rootfs size.

    .venv/bin/python bench/build.py [--sizes 50,200,800]

For each size a temporary rootfs (``usr/`` of ~SIZE MB, 1 MiB files of seeded pseudo-random
bytes, i.e. incompressible, plus a few thousand small text files) is built through
:mod:`imagebuilder.build` (prepare + 8 platforms + SHA256SUMS).  Then the same work is done
by the bare tools, one after another, on the build's own intermediate files: mkfs.ext2 -d
(USR, payload), mkfs.ext4 (OEM, ROOT), mkfs.vfat + mcopy (EFI), cp --sparse + dd + sfdisk
(disk), per platform cp --sparse + qemu-img convert / tar -S | gzip / tar, the PXE cpio
(find | cpio -o -H newc | gzip -n), and sha256sum.  ``overhead_ratio`` = build wall time /
sum of the raw steps.  Figures go to stdout as ``name=value`` lines, progress to stderr.
"""
from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from imagebuilder import build  # noqa: E402

MIB = 1024 * 1024


def emit(name: str, value) -> None:
    if isinstance(value, float):
        value = f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    print(f"{name}={value}", flush=True)


def log(*args) -> None:
    print("bench:", *args, file=sys.stderr, flush=True)


def make_rootfs(dest: Path, size_mb: int) -> Path:
    rng = random.Random(size_mb)
    usr = dest / "usr"
    for i in range(size_mb):
        d = usr / "lib" / f"pkg{i // 50:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"blob{i:05d}.bin").write_bytes(rng.randbytes(MIB))
    docs = usr / "share" / "doc"
    docs.mkdir(parents=True, exist_ok=True)
    for i in range(2000):
        (docs / f"note{i:04d}.txt").write_text(f"note {i}\n" * rng.randint(1, 40))
    return dest


def sh(cmd: str, cwd: Path | None = None) -> float:
    t = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)
    return time.monotonic() - t


def raw_steps(prep: build.Prepared, out: Path, tmp: Path, usr_tree: Path) -> dict[str, float]:
    """The bare tools doing the build's work, each alone; returns seconds per step."""
    w = prep.workdir / build.WORK
    t: dict[str, float] = {}
    usr_size = prep.usr_image.stat().st_size
    q = lambda p: f"'{p}'"  # noqa: E731
    t["mkfs_usr"] = sh(f"truncate -s {usr_size} {q(tmp / 'usr.img')} && mkfs.ext2 -q -F -d {q(usr_tree)} "
                       f"{q(tmp / 'usr.img')}")
    t["mkfs_payload"] = sh(f"truncate -s {usr_size} {q(tmp / 'p.img')} && mkfs.ext2 -q -F -d {q(usr_tree)} "
                           f"{q(tmp / 'p.img')}")
    t["mkfs_oem_root"] = sh(f"truncate -s 8M {q(tmp / 'oem.img')} && mkfs.ext4 -q -F {q(tmp / 'oem.img')} && "
                            f"truncate -s 16M {q(tmp / 'root.img')} && mkfs.ext4 -q -F {q(tmp / 'root.img')}")
    efi_size = (w / "efi.img").stat().st_size
    t["vfat_efi"] = sh(f"truncate -s {efi_size} {q(tmp / 'efi.img')} && mkfs.vfat {q(tmp / 'efi.img')} >/dev/null"
                       f" && MTOOLS_SKIP_CHECK=1 mcopy -s -i {q(tmp / 'efi.img')} {q(w / 'efi-tree')}/* ::/")
    t["disk_assemble"] = sh(
        f"truncate -s {prep.disk.stat().st_size} {q(tmp / 'disk.raw')} && "
        f"dd if={q(tmp / 'usr.img')} of={q(tmp / 'disk.raw')} bs=1M seek=100 conv=notrunc,sparse status=none && "
        f"sfdisk --dump {q(prep.disk)} | sfdisk -q {q(tmp / 'disk.raw')}")
    disk = q(prep.disk)
    d = tmp / "p"
    d.mkdir()
    t["pxe_cpio"] = sh(f"mkdir -p i/bin && cp {q(prep.busybox)} i/bin/ && cp {q(prep.usr_image)} i/usr.img && "
                       f"cd i && find . | cpio -o -H newc --quiet | gzip -n > ../pxe.cpio.gz", cwd=d)
    for name in ("ami", "gce", "openstack", "virtualbox", "vmware", "vagrant", "qemu"):
        t[f"copy_{name}"] = sh(f"cp --sparse=always {disk} {name}.raw", cwd=d)
    t["ami_vmdk"] = sh("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized ami.raw ami.vmdk", cwd=d)
    t["gce_tar"] = sh("mv gce.raw disk.raw && tar --format=oldgnu -S -cf - disk.raw | gzip -n > gce.tar.gz", cwd=d)
    t["openstack_qcow2"] = sh("qemu-img convert -f raw -O qcow2 openstack.raw o.qcow2", cwd=d)
    t["virtualbox_vmdk_ova"] = sh("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized virtualbox.raw "
                                  "vb.vmdk && echo x > vb.ovf && tar -cf vb.ova vb.ovf vb.vmdk", cwd=d)
    t["vmware_vmdk_ova"] = sh("qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse vmware.raw vm.vmdk && "
                              "qemu-img convert -f raw -O vmdk -o subformat=streamOptimized vmware.raw vms.vmdk && "
                              "echo x > vm.ovf && tar -cf vm.ova vm.ovf vms.vmdk", cwd=d)
    t["vagrant_box"] = sh("qemu-img convert -f raw -O vmdk -o subformat=streamOptimized vagrant.raw box-disk1.vmdk"
                          " && echo {} > metadata.json && tar -cf - metadata.json box-disk1.vmdk | gzip -n > v.box",
                          cwd=d)
    t["qemu_qcow2"] = sh("qemu-img convert -f raw -O qcow2 qemu.raw q.qcow2", cwd=d)
    t["sha256sum"] = sh(f"sha256sum {q(out)}/fleetweb_* > /dev/null")
    return t


def run(size_mb: int, base: Path) -> dict[str, float]:
    work = base / f"s{size_mb}"
    work.mkdir()
    log(f"rootfs of {size_mb} MB")
    rootfs = make_rootfs(work / "rootfs", size_mb)
    out = work / "out"
    ctx = build.BuildContext(workdir=out, version="1.0.0", channel="alpha", rootfs=rootfs, source_date_epoch=1700000000)
    t0 = time.monotonic()
    prep = build.prepare(ctx)
    t_prep = time.monotonic() - t0
    arts = [prep.payload_artifact()]
    for platform in build.PLATFORMS:
        arts += build.build_platform(ctx, prep, platform)
    build.write_sums(ctx, arts)
    wall = time.monotonic() - t0
    log(f"build {wall:.1f}s; raw tool steps...")
    tmp = work / "raw"
    tmp.mkdir()
    steps = raw_steps(prep, out, tmp, rootfs / "usr")
    raw = sum(steps.values())
    total = sum(a.size for a in arts)
    shutil.rmtree(work)
    return {"wall": wall, "prepare": t_prep, "raw": raw, "ratio": wall / raw, "artifacts_mb": total / MIB}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50,200", help="rootfs sizes in MB, comma list (e.g. 50,200,800)")
    ap.add_argument("--tmp", default=None, help="scratch directory (default: var/tmp)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    scratch = Path(args.tmp or ROOT / "var" / "tmp")
    scratch.mkdir(parents=True, exist_ok=True)
    build.rootfs.fetch_inputs()        # the one-time download is not part of the figures
    emit("cores", os.cpu_count())
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-build-", dir=scratch) as base:
        for size in sizes:
            r = results[size] = run(size, Path(base))
            emit(f"build_{size}mb_wall_s", r["wall"])
            emit(f"build_{size}mb_prepare_s", r["prepare"])
            emit(f"build_{size}mb_raw_tools_s", r["raw"])
            emit(f"build_{size}mb_overhead_ratio", r["ratio"])
            emit(f"build_{size}mb_artifacts_mb", r["artifacts_mb"])
    first = sizes[0]
    for size in sizes[1:]:
        emit(f"growth_{first}_to_{size}mb_x", results[size]["wall"] / results[first]["wall"])
        emit(f"build_s_per_100mb_{first}_to_{size}",
             (results[size]["wall"] - results[first]["wall"]) / (size - first) * 100)


if __name__ == "__main__":
    main()
