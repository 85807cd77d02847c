"""Disk and archive wrappers: qcow2, vmdk, tar(.gz), OVF, VMX, Vagrantfile, the qemu launch script.

Every writer is reproducible: tar entries get one mtime and owner 0:0 (``--sort`` or a given
order), gzip runs with ``-n`` (no name, mtime 0), and the random ``CID`` qemu-img puts in a vmdk
descriptor is replaced by one derived from the build.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import struct
import subprocess
from pathlib import Path
from xml.sax.saxutils import escape

from imagebuilder.disk import ToolError, find_tool, run_tool
from imagebuilder.rootfs import CpioWriter

# OVF ids (DMTF CIM_OperatingSystem): 101 = "Linux 2.6.x 64-bit" (VirtualBox: Linux26_64).
OVF_OS_ID = 101


def qcow2(raw: Path, out: Path) -> Path:
    run_tool([find_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "qcow2", "-o", "compat=1.1",
              str(raw), str(out)])
    return out


def vmdk(raw: Path, out: Path, subformat: str, *, seed: str, adapter: str = "ide") -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    run_tool([find_tool("qemu-img"), "convert", "-q", "-f", "raw", "-O", "vmdk", "-o",
              f"subformat={subformat},adapter_type={adapter}", str(raw), str(out)])
    _fix_cid(out, seed)
    return out


def _fix_cid(path: Path, seed: str) -> None:
    """Replace the descriptor's random ``CID=`` (qemu prints it unpadded) by a derived 8-digit one.

    The descriptor is text in a fixed, NUL-padded area (sparse header ``descriptorOffset`` /
    ``descriptorSize``), so the line may grow by a few bytes in place.
    """
    cid = hashlib.sha256(f"cid|{seed}".encode()).hexdigest()[:8].encode()
    with open(path, "r+b") as fh:
        header = fh.read(512)
        if header[:4] != b"KDMV":
            raise ToolError("qemu-img", 0, f"{path.name} is not a sparse vmdk")
        desc_sector, desc_sectors = struct.unpack_from("<QQ", header, 28)
        fh.seek(desc_sector * 512)
        area = fh.read(desc_sectors * 512)
        text = area.split(b"\0", 1)[0]
        new, n = re.subn(rb"\nCID=[0-9a-f]{1,8}\n", b"\nCID=" + cid + b"\n", text, count=1)
        if n != 1 or len(new) >= len(area):
            raise ToolError("qemu-img", 0, f"no CID in the vmdk descriptor of {path.name}")
        fh.seek(desc_sector * 512)
        fh.write(new.ljust(len(area), b"\0"))


def tar(out: Path, directory: Path, names: list[str], *, epoch: int, gzip_it: bool = False,
        sparse: bool = False, fmt: str | None = None) -> Path:
    """GNU tar of ``names`` (in this order) from ``directory``; sparse uses ``--format=oldgnu -S``."""
    fmt = fmt or ("oldgnu" if sparse else "gnu")
    cmd = [find_tool("tar"), f"--format={fmt}", "--mtime=@%d" % epoch, "--owner=0", "--group=0",
           "--numeric-owner", "--mode=go-w", "-C", str(directory), "-cf", "-"]
    if sparse:
        cmd.insert(2, "-S")
    cmd += ["--", *names]
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as fh:
        if not gzip_it:
            run_tool(cmd, stdout=fh)
        else:
            # tar | gzip -n: both logged, both checked
            from imagebuilder.disk import _log_hook
            log = _log_hook.get()
            if log:
                log("$ " + " ".join(cmd) + " | gzip -n -6")
            tar_p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            gz_p = subprocess.Popen([find_tool("gzip"), "-n", "-6"], stdin=tar_p.stdout, stdout=fh,
                                    stderr=subprocess.PIPE)
            tar_p.stdout.close()
            gz_err = gz_p.communicate()[1]
            tar_err = tar_p.stderr.read()
            tar_p.wait()
            tar_p.stderr.close()
            if tar_p.returncode != 0:
                raise ToolError("tar", tar_p.returncode, tar_err.decode(errors="replace"), cmd)
            if gz_p.returncode != 0:
                raise ToolError("gzip", gz_p.returncode, gz_err.decode(errors="replace"))
    os.replace(tmp, out)
    return out


def cpio_with_file(out: Path, name: str, path: Path, epoch: int) -> Path:
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        w = CpioWriter(gz, epoch)
        w.file(name, path)
        w.close()
    return out


# The disk controllers the artifacts declare: ones the Debian cloud kernel drives (it has no
# ahci/libata, mptspi or mptsas).  VirtualBox 6.1+: virtio-scsi, an OVF "Other Storage Device"
# (ResourceType 20) of ResourceSubType VirtioSCSI, as VirtualBox's own OVF export/import writes
# and reads it; the initramfs loads virtio_scsi + sd_mod.  VMware: PVSCSI, ``scsi0.virtualDev =
# "pvscsi"`` in the .vmx and ResourceSubType VirtualSCSI (a ParallelSCSIHBA, ResourceType 6) in
# the OVF, as ovftool writes it; the initramfs loads vmw_pvscsi + sd_mod.
VIRTUALBOX_CONTROLLER = "VirtioSCSI"
VMWARE_OVF_CONTROLLER = "VirtualSCSI"
VMWARE_VMX_CONTROLLER = "pvscsi"


def ovf(name: str, disk: Path, capacity: int, *, flavor: str) -> str:
    """An OVF 1.0 descriptor for one VM with one disk (VirtualBox: virtio-scsi; VMware: PVSCSI)."""
    vsys = "virtualbox-2.2" if flavor == "virtualbox" else "vmx-11"
    if flavor == "virtualbox":
        ctrl = ("<rasd:Caption>virtioSCSIController0</rasd:Caption>"
                "<rasd:Description>VirtioSCSI Controller</rasd:Description>"
                "<rasd:ElementName>virtioSCSIController0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID>"
                f"<rasd:ResourceSubType>{VIRTUALBOX_CONTROLLER}</rasd:ResourceSubType>"
                "<rasd:ResourceType>20</rasd:ResourceType>")
    else:
        ctrl = ("<rasd:Caption>scsiController0</rasd:Caption><rasd:Description>SCSI Controller</rasd:Description>"
                "<rasd:ElementName>scsiController0</rasd:ElementName><rasd:InstanceID>5</rasd:InstanceID>"
                f"<rasd:ResourceSubType>{VMWARE_OVF_CONTROLLER}</rasd:ResourceSubType>"
                "<rasd:ResourceType>6</rasd:ResourceType>")
    n = escape(name)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
  xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
  xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:href="{escape(disk.name)}" ovf:id="file1" ovf:size="{disk.stat().st_size}"/>
  </References>
  <DiskSection>
    <Info>List of the virtual disks used in the package</Info>
    <Disk ovf:capacity="{capacity}" ovf:diskId="vmdisk1" ovf:fileRef="file1"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <NetworkSection>
    <Info>Logical networks used in the package</Info>
    <Network ovf:name="NAT"><Description>Logical network used by this appliance.</Description></Network>
  </NetworkSection>
  <VirtualSystem ovf:id="{n}">
    <Info>A virtual machine</Info>
    <Name>{n}</Name>
    <OperatingSystemSection ovf:id="{OVF_OS_ID}">
      <Info>The kind of installed guest operating system</Info>
      <Description>Linux26_64</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>Virtual hardware requirements for a virtual machine</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{n}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>{vsys}</vssd:VirtualSystemType>
      </System>
      <Item><rasd:Caption>1 virtual CPU</rasd:Caption><rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>1 virtual CPU</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>1</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>MegaBytes</rasd:AllocationUnits><rasd:Caption>1024 MB of memory</rasd:Caption>
        <rasd:Description>Memory Size</rasd:Description><rasd:ElementName>1024 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>1024</rasd:VirtualQuantity></Item>
      <Item><rasd:AutomaticAllocation>true</rasd:AutomaticAllocation><rasd:Caption>Ethernet adapter on 'NAT'</rasd:Caption>
        <rasd:Connection>NAT</rasd:Connection><rasd:ElementName>Ethernet adapter on 'NAT'</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID><rasd:ResourceSubType>E1000</rasd:ResourceSubType>
        <rasd:ResourceType>10</rasd:ResourceType></Item>
      <Item>{ctrl}</Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:Caption>disk1</rasd:Caption>
        <rasd:Description>Disk Image</rasd:Description><rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>6</rasd:InstanceID>
        <rasd:Parent>5</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def vmx(name: str, vmdk_name: str) -> str:
    """The .vmx: BIOS firmware (GRUB in BIOS-BOOT; the path the PVSCSI boot smoke proves — OVMF has no
    PVSCSI driver to test the EFI path with), the disk on a PVSCSI controller."""
    return f""".encoding = "UTF-8"
config.version = "8"
virtualHW.version = "11"
displayName = "{name}"
guestOS = "other4xlinux-64"
memsize = "1024"
numvcpus = "1"
firmware = "bios"
scsi0.present = "TRUE"
scsi0.virtualDev = "{VMWARE_VMX_CONTROLLER}"
scsi0:0.present = "TRUE"
scsi0:0.fileName = "{vmdk_name}"
ethernet0.present = "TRUE"
ethernet0.virtualDev = "vmxnet3"
ethernet0.connectionType = "nat"
ethernet0.addressType = "generated"
serial0.present = "TRUE"
serial0.fileType = "file"
serial0.fileName = "serial.log"
pciBridge0.present = "TRUE"
"""


def vagrantfile() -> str:
    return """# Fleetweb base box (virtualbox provider). Configure the host with cloud-config.
Vagrant.configure("2") do |config|
  config.ssh.username = "core"
  config.ssh.insert_key = true
  config.vm.synced_folder ".", "/vagrant", disabled: true
  config.vm.provider :virtualbox do |vb|
    vb.check_guest_additions = false
    vb.functional_vboxsf = false
    vb.memory = 1024
  end
end
"""


OVMF_CODE_CANDIDATES = ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_CODE_4M.fd",
                        "/usr/share/qemu/OVMF_CODE.fd")


def qemu_script(image: str, kernel: str, initrd: str, cmdline: str) -> str:
    """The launch script: UEFI boot of the disk when OVMF is there, else ``-kernel``/``-initrd``."""
    candidates = " ".join(OVMF_CODE_CANDIDATES)
    return f"""#!/bin/sh
# Boot the Fleetweb qemu image: ./{PREFIX_HINT}qemu.sh [-snapshot] [extra qemu args]
# With UEFI firmware (Debian package ovmf) the disk boots on its own: OVMF -> systemd-boot
# (EFI-SYSTEM, EFI/BOOT/BOOTX64.EFI) -> kernel + initramfs, which picks USR-A or USR-B by the
# GPT priority/tries/successful attributes (gptprio).  Without OVMF, or with BOOT=kernel, the
# kernel and initramfs next to this script are passed to QEMU with -kernel/-initrd instead.
# OVMF_CODE / OVMF_VARS override the firmware and the (writable) variable store; the store is
# created from OVMF's template next to the disk.  ACCEL=kvm for speed where KVM works (default
# tcg: it boots everywhere, ~10 s; a present but broken /dev/kvm fails only once the guest runs).
# Serial console on this terminal (Ctrl-A X).
set -e
DIR=$(cd "$(dirname "$0")" && pwd)
ACCELS="-accel ${{ACCEL:-tcg}}"
CODE=${{OVMF_CODE:-}}
if [ -z "$CODE" ]; then
  for f in {candidates}; do
    if [ -f "$f" ]; then CODE=$f; break; fi
  done
fi
if [ -n "$CODE" ] && [ "${{BOOT:-uefi}}" != kernel ]; then
  VARS=${{OVMF_VARS:-$DIR/{PREFIX_HINT}qemu_vars.fd}}
  if [ ! -f "$VARS" ]; then
    TEMPLATE=$(dirname "$CODE")/$(basename "$CODE" | sed 's/CODE/VARS/')
    cp "$TEMPLATE" "$VARS" 2>/dev/null || {{ VARS=${{TMPDIR:-/tmp}}/fleetweb-qemu-vars.$$.fd; cp "$TEMPLATE" "$VARS"; }}
  fi
  exec qemu-system-x86_64 -machine q35 $ACCELS -m "${{MEMORY:-1024}}" -nographic \\
    -drive if=pflash,format=raw,readonly=on,file="$CODE" -drive if=pflash,format=raw,file="$VARS" \\
    -drive if=none,id=disk0,file="$DIR/{image}",format=qcow2 -device virtio-blk-pci,drive=disk0,bootindex=0 \\
    -netdev user,id=net0 -device virtio-net-pci,netdev=net0 "$@"
fi
exec qemu-system-x86_64 -machine q35 $ACCELS -m "${{MEMORY:-1024}}" -nographic \\
  -kernel "$DIR/{kernel}" -initrd "$DIR/{initrd}" -append "{cmdline}" \\
  -drive if=virtio,file="$DIR/{image}",format=qcow2 \\
  -netdev user,id=net0 -device virtio-net-pci,netdev=net0 "$@"
"""


PREFIX_HINT = "fleetweb_production_"
