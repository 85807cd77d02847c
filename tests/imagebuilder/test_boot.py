"""Boot smoke: the PXE kernel+initramfs and the qemu qcow2 boot under TCG to the banner."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

from imagebuilder.build import PREFIX as P

BOOT_TIMEOUT = 60
BANNER = re.compile(r"fleetweb-boot: version=(\S+) usr=(\S+) mounted=(\S+)")


def _boot(tmp_path, name: str, kernel, initrd, append: str, drive=None) -> tuple[str, float]:
    log = tmp_path / f"{name}.serial.log"
    cmd = ["qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-nographic", "-no-reboot", "-monitor", "none",
           "-serial", f"file:{log}", "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
    if drive:
        cmd += ["-drive", f"if=virtio,file={drive},format=qcow2,snapshot=on"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while time.monotonic() - start < BOOT_TIMEOUT:
            text = log.read_text(errors="replace") if log.exists() else ""
            if BANNER.search(text):
                return text, time.monotonic() - start
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{name}: no banner within {BOOT_TIMEOUT}s (qemu rc={proc.poll()}):\n"
                             f"{(log.read_text(errors='replace') if log.exists() else '')[-3000:]}")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stderr.close()


def test_the_pxe_kernel_and_initramfs_boot_to_the_banner_with_usr_mounted_read_only(built, tmp_path):
    text, took = _boot(tmp_path, "pxe", built / f"{P}_pxe.vmlinuz", built / f"{P}_pxe_image.cpio.gz",
                       "console=ttyS0")
    assert BANNER.search(text).groups() == ("4.2.0", "USR-A", "ro")
    assert "fleetweb-init: found USR image /usr.img (PXE)" in text
    assert re.search(r"mounted /usr.img via /dev/loop\d+, filesystem label USR-A on /usr \(ro\)", text)
    assert took < BOOT_TIMEOUT


def test_the_qemu_disk_boots_the_built_kernel_and_finds_usr_by_its_gpt_label(built, tmp_path):
    script = (built / f"{P}_qemu.sh").read_text()
    append = re.search(r'-append "([^"]+)"', script).group(1)
    assert "mount.usr=PARTLABEL=USR-A" in append
    text, took = _boot(tmp_path, "qemu", built / f"{P}_qemu.vmlinuz", built / f"{P}_qemu_initrd.cpio.gz",
                       append.replace("console=tty0 ", ""), drive=built / f"{P}_qemu_image.qcow2")
    assert BANNER.search(text).groups() == ("4.2.0", "USR-A", "ro")
    assert re.search(r"found USR by GPT label PARTNAME=USR-A at /dev/vd[a-z]3", text)
    assert re.search(r"mounted /dev/vd[a-z]3 on /usr \(ro\)", text)
    assert took < BOOT_TIMEOUT
